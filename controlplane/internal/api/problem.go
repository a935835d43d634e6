package api

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/keygate/keygate/controlplane/internal/lifecycle"
	"github.com/keygate/keygate/controlplane/internal/store"
	"github.com/keygate/keygate/internal/wire"
)

// Stable machine-readable error codes (the "error" member of a problem).
const (
	codeInvalidRequest   = "invalid_request"
	codeInvalidJSON      = "invalid_json"
	codeUnknownField     = "unknown_field"
	codeTooLarge         = "too_large"
	codeUnsupportedMedia = "unsupported_media_type"
	codeUnauthorized     = "unauthorized"
	codeForbidden        = "forbidden"
	// codeClientCertRequired: mutual TLS is on and the connection
	// presented no verified client certificate.
	codeClientCertRequired = "client_certificate_required"
	codeNotFound           = "not_found"
	codeConflict           = "conflict"
	codeMethodNotAllowed   = "method_not_allowed"
	codeInternal           = "internal"
	codeUnavailable        = "unavailable"
)

// FieldError names one invalid field of a request.
type FieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

// problem is an RFC 9457 problem details object. Clients branch on the
// stable code in "error" ("type" carries the same code as a URN); "detail"
// is the human explanation and "message" its deprecated alias (the same
// text, kept for clients written before "detail"); "instance" is the
// request's path. It is also the error type handlers return.
type problem struct {
	Type     string       `json:"type"`
	Title    string       `json:"title"`
	Status   int          `json:"status"`
	Detail   string       `json:"detail"`
	Instance string       `json:"instance,omitempty"`
	Code     string       `json:"error"`
	Message  string       `json:"message"` // deprecated: same as Detail
	Errors   []FieldError `json:"errors,omitempty"`

	header http.Header // extra response headers (WWW-Authenticate, Allow)
	cause  error       // logged for internal errors, never sent
}

func (p *problem) Error() string { return p.Code + ": " + p.Detail }

// problemTypeBase prefixes the "type" URI; the rest is the error code.
// docs/problems.md lists every code.
const problemTypeBase = wire.ProblemTypePrefix

func newProblem(status int, code, detail string) *problem {
	return &problem{
		Type:   problemTypeBase + code,
		Title:  http.StatusText(status),
		Status: status,
		Code:   code,
		Detail: detail,
	}
}

// invalid returns a 400 invalid_request problem listing field errors.
func invalid(errs ...FieldError) *problem {
	p := newProblem(http.StatusBadRequest, codeInvalidRequest, "the request has invalid fields")
	if len(errs) == 1 {
		p.Detail = errs[0].Field + ": " + errs[0].Message
	}
	p.Errors = errs
	return p
}

func notFound(what string) *problem {
	return newProblem(http.StatusNotFound, codeNotFound, what+" not found")
}

func conflict(message string) *problem {
	return newProblem(http.StatusConflict, codeConflict, message)
}

func internalError(cause error) *problem {
	p := newProblem(http.StatusInternalServerError, codeInternal, "internal error")
	p.cause = cause
	return p
}

// errorProblems is the one table from the errors of the lifecycle rules
// and the store to problems, first match wins. Each entry makes the
// problem from the error and what (the resource, for generic messages).
// Errors it does not list are internal (500).
var errorProblems = []struct {
	err  error
	make func(err error, what string) *problem
}{
	{lifecycle.ErrInvalid, lifecycleInvalid},
	{lifecycle.ErrRevoked, lifecycleConflict},
	{lifecycle.ErrExpired, lifecycleConflict},
	{lifecycle.ErrHasSuccessor, lifecycleConflict},
	{store.ErrInvalid, func(err error, _ string) *problem {
		var fe *store.FieldError
		if errors.As(err, &fe) {
			return invalid(FieldError{Field: fe.Field, Message: fe.Message})
		}
		return newProblem(http.StatusBadRequest, codeInvalidRequest, "invalid request")
	}},
	{store.ErrNotFound, func(_ error, what string) *problem { return notFound(what) }},
	{store.ErrConflict, func(_ error, what string) *problem { return conflict(what + " conflicts with an existing one") }},
	{store.ErrBadCursor, func(error, string) *problem {
		return invalid(FieldError{Field: "cursor", Message: "malformed or does not belong to this query"})
	}},
	{context.DeadlineExceeded, func(err error, _ string) *problem {
		p := newProblem(http.StatusServiceUnavailable, codeUnavailable, "the store did not answer in time")
		p.cause = err
		return p
	}},
}

// lifecycleInvalid answers a lifecycle parameter out of range, naming it.
func lifecycleInvalid(err error, _ string) *problem {
	var le *lifecycle.Error
	if errors.As(err, &le) && le.Field != "" {
		return invalid(FieldError{Field: le.Field, Message: le.Message})
	}
	return newProblem(http.StatusBadRequest, codeInvalidRequest, err.Error())
}

// lifecycleConflict answers a lifecycle refusal with its explanation.
func lifecycleConflict(err error, _ string) *problem {
	var le *lifecycle.Error
	if errors.As(err, &le) {
		return conflict(le.Message)
	}
	return conflict(err.Error())
}

// fromStoreError maps an error of the store or of the lifecycle rules to
// a problem (errorProblems). what names the resource for not-found
// messages.
func fromStoreError(err error, what string) *problem {
	for _, e := range errorProblems {
		if errors.Is(err, e.err) {
			return e.make(err, what)
		}
	}
	return internalError(err)
}

// writeProblem sends p as application/problem+json. Internal causes are
// logged (without request bodies or credentials), never sent.
func (s *Server) writeProblem(w http.ResponseWriter, r *http.Request, p *problem) {
	if p.cause != nil && r.Context().Err() == nil {
		s.log.LogAttrs(r.Context(), slog.LevelError, "request failed",
			slog.String("method", clip(r.Method, maxLoggedMethod)), slog.String("path", clip(r.URL.Path, maxLoggedPath)),
			slog.String("error", p.cause.Error()))
	}
	for k, vs := range p.header {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	p.Message = p.Detail
	if p.Instance == "" {
		p.Instance = clip(r.URL.Path, maxLoggedPath) // a client chooses its length
	}
	body, err := json.Marshal(p)
	if err != nil { // cannot happen: only strings and ints
		body = []byte(`{"error":"internal"}`)
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(p.Status)
	_, _ = w.Write(body)
}

// writeJSON sends v as application/json with the given status.
func (s *Server) writeJSON(w http.ResponseWriter, r *http.Request, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		s.writeProblem(w, r, internalError(err))
		return
	}
	writeBody(w, status, body)
}

func writeBody(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
