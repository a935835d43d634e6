package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"reflect"
	"strings"

	"github.com/keygate/keygate/internal/wire"
)

// Body size limits.
const (
	maxAdminBody = 64 << 10          // key create/update bodies (metadata <= 4 KiB, 100 hosts)
	maxUsageBody = wire.MaxUsageBody // usage batches
)

// decodeJSON reads r's body into dst: Content-Type must be JSON, the body at
// most limit bytes, one JSON object whose member names are exactly those
// dst declares (encoding/json alone would match them case-insensitively),
// each at most once, and no trailing data. With allowEmpty an empty body
// leaves dst untouched. JSON null or any other non-object is refused.
//
// A Content-Length over the limit is refused before the body is read, so
// a client that sent "Expect: 100-continue" gets the 413 instead of a
// "100 Continue" followed by a connection reset when the server stops
// reading.
func decodeJSON(w http.ResponseWriter, r *http.Request, limit int64, dst any, allowEmpty bool) *problem {
	if r.ContentLength > limit {
		return tooLarge(limit)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return tooLarge(limit)
		}
		return newProblem(http.StatusBadRequest, codeInvalidRequest, "could not read the request body")
	}
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		if allowEmpty {
			return nil
		}
		return newProblem(http.StatusBadRequest, codeInvalidJSON, "the request body is empty; a JSON object is required")
	}
	if p := checkJSONContentType(r); p != nil {
		return p
	}
	if !json.Valid(trimmed) {
		// Let the decoder say where and how the syntax is broken.
		dec := json.NewDecoder(bytes.NewReader(trimmed))
		var v any
		if err := dec.Decode(&v); err != nil {
			return jsonProblem(err)
		}
		return newProblem(http.StatusBadRequest, codeInvalidJSON, "unexpected data after the JSON object")
	}
	if trimmed[0] != '{' {
		return newProblem(http.StatusBadRequest, codeInvalidJSON, "the request body must be a JSON object")
	}
	// Member names first, so that an unknown member is named with its path.
	if p := checkMembers(trimmed, reflect.TypeOf(dst)); p != nil {
		return p
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return jsonProblem(err)
	}
	return nil
}

func tooLarge(limit int64) *problem {
	return newProblem(http.StatusRequestEntityTooLarge, codeTooLarge,
		fmt.Sprintf("the request body exceeds %d bytes", limit))
}

func checkJSONContentType(r *http.Request) *problem {
	ct := r.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if ct == "" || err != nil || mt != "application/json" {
		return newProblem(http.StatusUnsupportedMediaType, codeUnsupportedMedia,
			"Content-Type must be application/json")
	}
	return nil
}

// jsonProblem turns a json.Decoder error into a problem naming the field.
func jsonProblem(err error) *problem {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var fe fieldDecodeError
	switch {
	case errors.As(err, &fe):
		return invalid(FieldError{Field: fe.field, Message: fe.msg})
	case errors.As(err, &syn):
		return newProblem(http.StatusBadRequest, codeInvalidJSON,
			fmt.Sprintf("malformed JSON at byte %d", syn.Offset))
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		return newProblem(http.StatusBadRequest, codeInvalidJSON, "truncated JSON")
	case errors.As(err, &typ):
		if typ.Field == "" {
			return newProblem(http.StatusBadRequest, codeInvalidJSON, "the request body must be a JSON object")
		}
		return invalid(FieldError{Field: typ.Field, Message: "must be " + jsonTypeName(typ.Type.String())})
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		name = strings.Trim(name, `"`)
		p := newProblem(http.StatusBadRequest, codeUnknownField, fmt.Sprintf("unknown field %q", name))
		p.Errors = []FieldError{{Field: name, Message: "unknown field"}}
		return p
	}
	return newProblem(http.StatusBadRequest, codeInvalidJSON, "invalid JSON")
}

func jsonTypeName(goType string) string {
	switch {
	case strings.HasPrefix(goType, "int"), strings.HasPrefix(goType, "uint"):
		return "an integer"
	case strings.HasPrefix(goType, "float"):
		return "a number"
	case goType == "string":
		return "a string"
	case goType == "bool":
		return "a boolean"
	case strings.HasPrefix(goType, "[]"):
		return "an array"
	}
	return "an object"
}

// fieldDecodeError is returned by custom UnmarshalJSON methods so that the
// problem names the field.
type fieldDecodeError struct{ field, msg string }

func (e fieldDecodeError) Error() string { return e.field + ": " + e.msg }

// optional is a PATCH field: Set when present in the body, Null when it was
// JSON null (which clears the value).
type optional[T any] struct {
	Set   bool
	Null  bool
	Value T
}

// UnmarshalJSON implements json.Unmarshaler. encoding/json calls it for
// present members only, including explicit nulls.
func (o *optional[T]) UnmarshalJSON(b []byte) error {
	o.Set = true
	if string(b) == "null" {
		o.Null = true
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(&o.Value)
}

func (optional[T]) memberType() reflect.Type { return reflect.TypeFor[T]() }
