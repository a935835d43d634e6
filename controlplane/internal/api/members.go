package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"sync"
)

// checkMembers walks a JSON document that encoding/json has already
// decoded into a value of type t and refuses what encoding/json lets
// through: a member name that matches a field only when case is ignored
// ({"HOSTS": [...]}), and a member given twice (encoding/json keeps the
// last). Member names are checked wherever t describes the value (nested
// objects, arrays of objects, PATCH optionals); free-form values such as
// metadata are skipped. The document must be valid JSON.
func checkMembers(doc []byte, t reflect.Type) *problem {
	sc := memberScanner{b: doc}
	return sc.value(t)
}

// memberTyper is implemented by wrappers (optional[T]) whose JSON is that
// of another type.
type memberTyper interface{ memberType() reflect.Type }

var memberTyperType = reflect.TypeFor[memberTyper]()

// structFields maps each JSON member name of a struct type to its field's
// index and type; cached per type.
type structFields struct {
	index map[string]int
	types []reflect.Type
}

var fieldCache sync.Map // reflect.Type -> *structFields

func fieldsOf(t reflect.Type) *structFields {
	if v, ok := fieldCache.Load(t); ok {
		return v.(*structFields)
	}
	sf := &structFields{index: map[string]int{}}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		sf.index[name] = len(sf.types)
		sf.types = append(sf.types, f.Type)
	}
	fieldCache.Store(t, sf)
	return sf
}

// elemType unwraps pointers and optional wrappers down to the type whose
// JSON shape the document has.
func elemType(t reflect.Type) reflect.Type {
	for t != nil {
		switch {
		case t.Kind() == reflect.Pointer:
			t = t.Elem()
		case t.Implements(memberTyperType):
			t = reflect.Zero(t).Interface().(memberTyper).memberType()
		default:
			return t
		}
	}
	return t
}

type memberScanner struct {
	b    []byte
	i    int
	path []pathElem
}

func (s *memberScanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\r', '\n':
			s.i++
		default:
			return
		}
	}
}

// str reads a string token and returns its raw contents (escapes intact)
// and whether it holds an escape.
func (s *memberScanner) str() (raw []byte, escaped bool) {
	s.i++ // opening quote
	start := s.i
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case '\\':
			escaped = true
			s.i += 2
			continue
		case '"':
			raw = s.b[start:s.i]
			s.i++
			return raw, escaped
		}
		s.i++
	}
	return s.b[start:], escaped
}

// skip passes over one value of any shape.
func (s *memberScanner) skip() {
	s.ws()
	if s.i >= len(s.b) {
		return
	}
	switch s.b[s.i] {
	case '"':
		s.str()
	case '{', '[':
		depth := 0
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case '"':
				s.str()
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
			}
			s.i++
			if depth == 0 {
				return
			}
		}
	default: // number, true, false, null
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case ',', '}', ']', ' ', '\t', '\r', '\n':
				return
			}
			s.i++
		}
	}
}

// value checks one value of type t at the scanner's current path.
func (s *memberScanner) value(t reflect.Type) *problem {
	t = elemType(t)
	s.ws()
	if s.i >= len(s.b) || t == nil {
		s.skip()
		return nil
	}
	switch {
	case s.b[s.i] == '{' && t.Kind() == reflect.Struct:
		return s.object(fieldsOf(t))
	case s.b[s.i] == '[' && t.Kind() == reflect.Slice && t.Elem().Kind() != reflect.Uint8:
		s.i++
		for n := 0; ; n++ {
			s.ws()
			if s.b[s.i] == ']' {
				s.i++
				return nil
			}
			s.path = append(s.path, pathElem{index: n})
			p := s.value(t.Elem())
			s.path = s.path[:len(s.path)-1]
			if p != nil {
				return p
			}
			s.ws()
			if s.b[s.i] == ',' {
				s.i++
			}
		}
	}
	s.skip()
	return nil
}

func (s *memberScanner) object(fields *structFields) *problem {
	s.i++           // '{'
	var seen uint64 // by field index; structs here have far fewer than 64 fields
	var seenMore map[int]bool
	for {
		s.ws()
		if s.b[s.i] == '}' {
			s.i++
			return nil
		}
		raw, escaped := s.str()
		var (
			idx int
			ok  bool
		)
		if escaped {
			idx, ok = fields.index[unescape(raw)]
		} else {
			idx, ok = fields.index[string(raw)] // no allocation
		}
		s.path = append(s.path, pathElem{name: raw, escaped: escaped})
		if !ok {
			return unknownMember(s.pathString(), unescapeIf(raw, escaped), fields)
		}
		dup := false
		if idx < 64 {
			dup = seen&(1<<idx) != 0
			seen |= 1 << idx
		} else {
			dup = seenMore[idx]
			if seenMore == nil {
				seenMore = map[int]bool{}
			}
			seenMore[idx] = true
		}
		if dup {
			return invalid(FieldError{Field: s.pathString(), Message: "is given more than once"})
		}
		s.ws()
		s.i++ // ':'
		p := s.value(fields.types[idx])
		s.path = s.path[:len(s.path)-1]
		if p != nil {
			return p
		}
		s.ws()
		if s.b[s.i] == ',' {
			s.i++
		}
	}
}

// pathElem is one step of the path to the value being checked: a member
// name (raw, as in the document) or an array index.
type pathElem struct {
	name    []byte
	escaped bool
	index   int
}

// pathString names the current value in wire terms, e.g. counts[3].key_id.
func (s *memberScanner) pathString() string {
	var b strings.Builder
	for _, e := range s.path {
		if e.name == nil {
			b.WriteString("[" + strconv.Itoa(e.index) + "]")
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(unescapeIf(e.name, e.escaped))
	}
	return b.String()
}

func unescapeIf(raw []byte, escaped bool) string {
	if escaped {
		return unescape(raw)
	}
	return string(raw)
}

// unescape decodes the contents of a JSON string with escapes.
func unescape(raw []byte) string {
	var out string
	if err := json.Unmarshal(append(append([]byte{'"'}, raw...), '"'), &out); err != nil {
		return string(raw)
	}
	return out
}

// unknownMember is the problem for a member name that is not exactly one of
// the object's; a name that differs only in case says which one was meant.
func unknownMember(member, name string, fields *structFields) *problem {
	detail := fmt.Sprintf("unknown field %q", member)
	for known := range fields.index {
		if strings.EqualFold(known, name) {
			detail += fmt.Sprintf(" (member names are case-sensitive: %q)", known)
			break
		}
	}
	p := newProblem(http.StatusBadRequest, codeUnknownField, detail)
	p.Errors = []FieldError{{Field: member, Message: "unknown field"}}
	return p
}
