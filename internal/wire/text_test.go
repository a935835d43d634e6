package wire

import "testing"

func TestValidBudgetID(t *testing.T) {
	for s, want := range map[string]bool{
		"key_0123456789abcdefghij": true,
		"owner:acme":               true,
		"owner:Acme Corp.":         true,
		"owner:":                   false,
		"owner:\x00":               false,
		"other:acme":               false,
		"":                         false,
	} {
		if got := ValidBudgetID(s); got != want {
			t.Errorf("ValidBudgetID(%q) = %v, want %v", s, got, want)
		}
	}
}
