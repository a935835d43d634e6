// Package apikey owns what an API key is: its format (prefix, Base62 body,
// CRC32 checksum), how keys are generated (with the word list that generated
// keys must not spell), and the SHA-256 hash under which the control plane
// stores a key and the filter looks it up. The control plane and the filter
// (TinyGo) both use it.
package apikey
