package store

import (
	"reflect"
	"testing"
)

func TestListRoundTrip(t *testing.T) {
	for _, l := range [][]string{
		{}, {""}, {"a"}, {"api.example.com", "*.example.com", "[2001:db8::1]:8443"},
		{`q"uote`, `back\slash`, "<>&", "\u2028", "ünï", "a,b", `","`},
	} {
		s, err := marshalList(l)
		if err != nil {
			t.Fatal(err)
		}
		got, err := unmarshalList(s)
		if err != nil || !reflect.DeepEqual(got, l) {
			t.Errorf("round trip of %q via %s: %q, %v", l, s, got, err)
		}
	}
	for _, bad := range []string{"", "[", `["a"`, `["a",]`, `{"a":1}`, `["a" "b"]`, "[1]"} {
		if got, err := unmarshalList(bad); err == nil {
			t.Errorf("unmarshalList(%q) = %q, want an error", bad, got)
		}
	}
}
