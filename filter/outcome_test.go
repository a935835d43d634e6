package filter

import (
	"testing"

	"github.com/keygate/keygate/filter/internal/verdict"
)

// Every outcome verdict.Decide can return has its usage code, and every
// refusal among them its problem response.
func TestOutcomeCodes(t *testing.T) {
	for o := 0; o < verdict.NumOutcomes; o++ {
		code := outcomeCodes[o]
		switch {
		case code == "":
			t.Errorf("outcome %d has no code", o)
		case verdict.Outcome(o) == verdict.Allowed:
			if code != outcomeAllowed {
				t.Errorf("Allowed counts as %q", code)
			}
		case problemFor(code) == nil:
			t.Errorf("outcome %d (%s) has no problem response", o, code)
		}
	}
}
