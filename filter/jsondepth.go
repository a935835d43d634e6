package filter

// maxJSONDepth bounds the nesting of any JSON the module parses. gjson's
// validator and getters recurse once per level, and TinyGo's stack is small:
// a body nested a few thousand levels deep would overflow it and trap the
// VM. Nothing keygate reads nests deeper than 4.
const maxJSONDepth = 32

// jsonDepthOK reports whether b nests arrays and objects at most
// maxJSONDepth deep. It is a flat scan that only tracks strings and
// brackets, so it cannot itself overflow; it does not validate (gjson does
// that afterwards, on input this made safe to recurse into).
func jsonDepthOK(b []byte) bool {
	depth := 0
	inString := false
	for i := 0; i < len(b); i++ {
		c := b[i]
		if inString {
			switch c {
			case '\\':
				i++ // skip the escaped byte
			case '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '[', '{':
			depth++
			if depth > maxJSONDepth {
				return false
			}
		case ']', '}':
			depth--
		}
	}
	return true
}
