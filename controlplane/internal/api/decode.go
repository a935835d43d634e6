package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
)

// Body size limits.
const (
	maxAdminBody = 64 << 10 // key create/update bodies (metadata <= 4 KiB, 100 hosts)
	maxUsageBody = 4 << 20  // usage batches (docs/wire.md)
)

// decodeJSON reads r's body into dst: Content-Type must be JSON, the body at
// most limit bytes, one JSON object without unknown members or trailing
// data. With allowEmpty an empty body leaves dst untouched.
func decodeJSON(w http.ResponseWriter, r *http.Request, limit int64, dst any, allowEmpty bool) *problem {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return newProblem(http.StatusRequestEntityTooLarge, codeTooLarge,
				fmt.Sprintf("the request body exceeds %d bytes", limit))
		}
		return newProblem(http.StatusBadRequest, codeInvalidRequest, "could not read the request body")
	}
	if len(bytes.TrimSpace(body)) == 0 {
		if allowEmpty {
			return nil
		}
		return newProblem(http.StatusBadRequest, codeInvalidJSON, "the request body is empty; a JSON object is required")
	}
	if p := checkJSONContentType(r); p != nil {
		return p
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return jsonProblem(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return newProblem(http.StatusBadRequest, codeInvalidJSON, "unexpected data after the JSON object")
	}
	return nil
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
