package lifecycle

import (
	"io"

	"github.com/keygate/keygate/apikey"
)

const (
	// IDPrefix starts every key id.
	IDPrefix = "key_"
	// IDLen is the number of random Base62 characters after IDPrefix
	// (about 119 bits).
	IDLen = 20
)

// NewID draws a key id from r: IDPrefix and IDLen uniform Base62
// characters. It is the only generator of key ids.
func NewID(r io.Reader) (string, error) {
	buf := make([]byte, len(IDPrefix)+IDLen)
	copy(buf, IDPrefix)
	if err := apikey.FillBase62(buf[len(IDPrefix):], r); err != nil {
		return "", err
	}
	return string(buf), nil
}
