package host

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// AccessLogFormat is a compiled SubstitutionFormatString: json_format or
// text_format with Envoy's command operators.
type AccessLogFormat struct {
	json  []jsonField
	text  []segment
	isTxt bool
}

type jsonField struct {
	key    []byte // the JSON-encoded name
	name   string
	nested []jsonField
	value  []segment
}

// segment is a literal or one command operator.
type segment struct {
	literal string
	op      string // START_TIME, REQ, FILTER_STATE, ...
	arg     string
}

// logRecord is what one finished request offers to the access log.
type logRecord struct {
	start         time.Time
	duration      time.Duration
	status        int
	details       string
	req           *headerMap
	resp          *headerMap
	filterState   map[string][]byte
	bytesReceived int
	bytesSent     int
	protocol      string
	cluster       string
	upstreamHost  string
	remoteAddr    string
}

var numericOps = map[string]bool{"RESPONSE_CODE": true, "DURATION": true, "BYTES_RECEIVED": true, "BYTES_SENT": true}

func compileFormat(f *corev3.SubstitutionFormatString) (*AccessLogFormat, error) {
	if f == nil {
		return nil, errors.New("log_format is required here (Envoy's default text format is not reproduced)")
	}
	if len(f.GetFormatters()) > 0 {
		return nil, errors.New("formatter extensions are not supported")
	}
	if err := onlyFields(f, "log_format.", fieldSet("text_format", "json_format", "text_format_source")); err != nil {
		return nil, err
	}
	if js := f.GetJsonFormat(); js != nil {
		fields, err := compileStruct(js)
		if err != nil {
			return nil, err
		}
		return &AccessLogFormat{json: fields}, nil
	}
	if f.GetTextFormatSource() != nil {
		return nil, errors.New("text_format_source is not supported")
	}
	//lint:ignore SA1019 Envoy still accepts the deprecated text_format.
	segs, err := compileString(f.GetTextFormat())
	if err != nil {
		return nil, err
	}
	return &AccessLogFormat{text: segs, isTxt: true}, nil
}

func compileStruct(s *structpb.Struct) ([]jsonField, error) {
	names := make([]string, 0, len(s.GetFields()))
	for k := range s.GetFields() {
		names = append(names, k)
	}
	sort.Strings(names)
	var out []jsonField
	for _, k := range names {
		v := s.GetFields()[k]
		switch x := v.GetKind().(type) {
		case *structpb.Value_StringValue:
			segs, err := compileString(x.StringValue)
			if err != nil {
				return nil, fmt.Errorf("json_format %q: %w", k, err)
			}
			out = append(out, jsonField{key: jsonString(k), name: k, value: segs})
		case *structpb.Value_StructValue:
			nested, err := compileStruct(x.StructValue)
			if err != nil {
				return nil, err
			}
			out = append(out, jsonField{key: jsonString(k), name: k, nested: nested})
		default:
			return nil, fmt.Errorf("json_format %q: only strings and nested objects are supported", k)
		}
	}
	return out, nil
}

var knownOps = map[string]bool{
	"START_TIME": true, "DURATION": true, "RESPONSE_CODE": true, "RESPONSE_CODE_DETAILS": true,
	"RESPONSE_FLAGS": true, "BYTES_RECEIVED": true, "BYTES_SENT": true, "PROTOCOL": true,
	"REQ": true, "RESP": true, "FILTER_STATE": true, "UPSTREAM_CLUSTER": true, "UPSTREAM_HOST": true,
	"DOWNSTREAM_REMOTE_ADDRESS": true,
}

func compileString(s string) ([]segment, error) {
	var out []segment
	for len(s) > 0 {
		i := strings.IndexByte(s, '%')
		if i < 0 {
			out = append(out, segment{literal: s})
			break
		}
		if i > 0 {
			out = append(out, segment{literal: s[:i]})
		}
		s = s[i+1:]
		j := strings.IndexByte(s, '%')
		if j < 0 {
			return nil, errors.New("unterminated command operator")
		}
		cmd := s[:j]
		s = s[j+1:]
		if cmd == "" {
			out = append(out, segment{literal: "%"})
			continue
		}
		seg := segment{op: cmd}
		if k := strings.IndexByte(cmd, '('); k >= 0 {
			if !strings.HasSuffix(cmd, ")") {
				return nil, fmt.Errorf("malformed command operator %%%s%%", cmd)
			}
			seg.op, seg.arg = cmd[:k], cmd[k+1:len(cmd)-1]
		}
		if !knownOps[seg.op] {
			return nil, fmt.Errorf("command operator %%%s%% is not supported", cmd)
		}
		if seg.op == "FILTER_STATE" {
			key, mode, _ := strings.Cut(seg.arg, ":")
			if mode != "PLAIN" {
				return nil, fmt.Errorf("%%FILTER_STATE(%s)%%: only the PLAIN serialization is supported", seg.arg)
			}
			seg.arg = key
		}
		out = append(out, seg)
	}
	return out, nil
}

// eval returns the operator's value and whether it has one ("-" in text).
func (s segment) eval(r *logRecord) (string, bool) {
	switch s.op {
	case "":
		return s.literal, true
	case "START_TIME":
		return r.start.UTC().Format("2006-01-02T15:04:05.000Z"), true
	case "DURATION":
		return strconv.FormatInt(r.duration.Milliseconds(), 10), true
	case "RESPONSE_CODE":
		return strconv.Itoa(r.status), true
	case "RESPONSE_CODE_DETAILS":
		return r.details, r.details != ""
	case "RESPONSE_FLAGS":
		return "-", true
	case "BYTES_RECEIVED":
		return strconv.Itoa(r.bytesReceived), true
	case "BYTES_SENT":
		return strconv.Itoa(r.bytesSent), true
	case "PROTOCOL":
		return r.protocol, r.protocol != ""
	case "UPSTREAM_CLUSTER":
		return r.cluster, r.cluster != ""
	case "UPSTREAM_HOST":
		return r.upstreamHost, r.upstreamHost != ""
	case "DOWNSTREAM_REMOTE_ADDRESS":
		return r.remoteAddr, r.remoteAddr != ""
	case "REQ", "RESP":
		m := r.req
		if s.op == "RESP" {
			m = r.resp
		}
		if m == nil {
			return "", false
		}
		name, alt, _ := strings.Cut(strings.ToLower(s.arg), "?")
		if v, ok := m.get(name); ok {
			return v, true
		}
		if alt != "" {
			return m.get(alt)
		}
		return "", false
	case "FILTER_STATE":
		v, ok := r.filterState[s.arg]
		return string(v), ok
	}
	return "", false
}

// Line renders one access log line for r, ending in a newline.
func (f *AccessLogFormat) line(r *logRecord) []byte {
	if f.isTxt {
		var b strings.Builder
		for _, s := range f.text {
			v, ok := s.eval(r)
			if !ok {
				v = "-"
			}
			b.WriteString(v)
		}
		return []byte(b.String())
	}
	var buf bytes.Buffer
	writeJSONFields(&buf, f.json, r)
	buf.WriteByte('\n')
	return buf.Bytes()
}

func writeJSONFields(buf *bytes.Buffer, fields []jsonField, r *logRecord) {
	buf.WriteByte('{')
	for i, f := range fields {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.Write(f.key)
		buf.WriteByte(':')
		if f.nested != nil {
			writeJSONFields(buf, f.nested, r)
			continue
		}
		if len(f.value) == 1 && f.value[0].op != "" {
			v, ok := f.value[0].eval(r)
			switch {
			case !ok:
				buf.WriteString("null")
			case numericOps[f.value[0].op]:
				buf.WriteString(v)
			default:
				js, _ := json.Marshal(v)
				buf.Write(js)
			}
			continue
		}
		var b strings.Builder
		for _, s := range f.value {
			v, ok := s.eval(r)
			if !ok {
				v = "-"
			}
			b.WriteString(v)
		}
		js, _ := json.Marshal(b.String())
		buf.Write(js)
	}
	buf.WriteByte('}')
}

func jsonString(s string) []byte {
	b, _ := json.Marshal(s)
	return b
}
