// Package wordlist ships the list of words that keys the control plane
// generates must not spell (words.txt), in its own package so that the
// filter, which only checks keys, does not link it.
package wordlist

import (
	_ "embed"

	"github.com/keygate/keygate/apikey"
)

//go:embed words.txt
var text string

// Default returns the shipped list, compiled (a test holds it valid).
func Default() (*apikey.Words, error) {
	return apikey.ParseWords(text)
}
