package host

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	udpatypev1 "github.com/cncf/xds/go/udpa/type/v1"
	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
)

// Type names of the two TypedStruct messages Envoy accepts in place of an
// extension's typed config.
var typedStructNames = map[protoreflect.FullName]bool{
	(&udpatypev1.TypedStruct{}).ProtoReflect().Descriptor().FullName(): true,
	(&xdstypev3.TypedStruct{}).ProtoReflect().Descriptor().FullName():  true,
}

// loadJSON parses JSON into m as Envoy's MessageUtil::loadFromJson does:
// unknown fields are errors, and an enum value given as a string that is
// not a value name is retried in upper case (protobuf's
// case_insensitive_enum_parsing, which Envoy turns on), so `round_robin`
// and `strict_dns` are accepted. Go's protojson has no such option, so the
// JSON is walked along m's descriptor first and such strings are replaced
// by the upper-case value name.
func loadJSON(js []byte, m proto.Message) error {
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return err
	}
	upperEnums(v, m.ProtoReflect().Descriptor())
	fixed, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return protojson.Unmarshal(fixed, m)
}

// upperEnums rewrites, in the decoded JSON v of a message md, every enum
// string that only matches a value name in upper case. It follows Any
// values by their @type; free-form well-known types (Struct, Value) are
// left alone, as protobuf leaves them.
func upperEnums(v any, md protoreflect.MessageDescriptor) {
	obj, ok := v.(map[string]any)
	if !ok {
		return
	}
	if md.FullName() == "google.protobuf.Any" {
		t, _ := obj["@type"].(string)
		mt, err := protoregistry.GlobalTypes.FindMessageByURL(t)
		if err == nil {
			upperEnums(obj, mt.Descriptor())
		}
		return
	}
	if strings.HasPrefix(string(md.FullName()), "google.protobuf.") {
		return
	}
	fields := md.Fields()
	for key, val := range obj {
		fd := fields.ByJSONName(key)
		if fd == nil {
			fd = fields.ByTextName(key)
		}
		if fd == nil {
			continue // protojson reports it
		}
		switch {
		case fd.IsMap():
			if mo, ok := val.(map[string]any); ok {
				for k, e := range mo {
					mo[k] = fixValue(e, fd.MapValue())
				}
			}
		case fd.IsList():
			if l, ok := val.([]any); ok {
				for i, e := range l {
					l[i] = fixValue(e, fd)
				}
			}
		default:
			obj[key] = fixValue(val, fd)
		}
	}
}

func fixValue(v any, fd protoreflect.FieldDescriptor) any {
	switch fd.Kind() {
	case protoreflect.EnumKind:
		s, ok := v.(string)
		if !ok {
			return v
		}
		vals := fd.Enum().Values()
		if vals.ByName(protoreflect.Name(s)) == nil && vals.ByName(protoreflect.Name(strings.ToUpper(s))) != nil {
			return strings.ToUpper(s)
		}
	case protoreflect.MessageKind, protoreflect.GroupKind:
		upperEnums(v, fd.Message())
	}
	return v
}

// opaqueConfig returns the message an extension's typed_config configures
// and its type URL, as Envoy's translateOpaqueConfig does: an Any holds the
// message itself; a TypedStruct (udpa.type.v1 or xds.type.v3) holds the
// type URL and the message as a Struct, converted through JSON with the
// same strict loader as the bootstrap.
func opaqueConfig(a *anypb.Any) (proto.Message, string, error) {
	if a == nil {
		return nil, "", fmt.Errorf("missing typed_config")
	}
	m, err := a.UnmarshalNew()
	if err != nil {
		return nil, a.GetTypeUrl(), fmt.Errorf("typed_config %s: %w", a.GetTypeUrl(), err)
	}
	if !typedStructNames[m.ProtoReflect().Descriptor().FullName()] {
		return m, a.GetTypeUrl(), nil
	}
	var url string
	var js []byte
	switch ts := m.(type) {
	case *udpatypev1.TypedStruct:
		url = ts.GetTypeUrl()
		js, err = protojson.Marshal(ts.GetValue())
	case *xdstypev3.TypedStruct:
		url = ts.GetTypeUrl()
		js, err = protojson.Marshal(ts.GetValue())
	}
	if err != nil {
		return nil, url, err
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByURL(url)
	if err != nil {
		return nil, url, fmt.Errorf("TypedStruct type_url %q: %w", url, err)
	}
	inner := mt.New().Interface()
	if ts := string(js); ts == "null" || ts == "" {
		js = []byte("{}")
	}
	if err := loadJSON(js, inner); err != nil {
		return nil, url, fmt.Errorf("TypedStruct %s: %w", url, err)
	}
	return inner, url, nil
}
