package host

import (
	"encoding/binary"
	"math"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// property answers proxy_get_property for the current context: the subset
// of Envoy's attributes the host knows, then filter state written with
// proxy_set_property. Anything else is NOT_FOUND, as in Envoy.
func (in *instance) property(path string) ([]byte, bool) {
	seg := strings.Split(path, "\x00")
	h := in.host
	switch seg[0] {
	case "node":
		if len(seg) == 2 {
			switch seg[1] {
			case "id":
				return []byte(h.cfg.NodeID), true
			case "cluster":
				return []byte(h.cfg.NodeCluster), true
			}
		}
		return nil, false
	case "plugin_name", "plugin_root_id", "plugin_vm_id":
		rc := in.rootFor(in.current)
		if rc == nil || len(seg) != 1 {
			return nil, false
		}
		switch seg[0] {
		case "plugin_name":
			return []byte(rc.plugin.Name), true
		case "plugin_root_id":
			return []byte(rc.plugin.RootID), true
		default:
			return []byte(rc.plugin.VMID), true
		}
	}
	sc := in.streams[in.current]
	if sc == nil {
		return nil, false
	}
	ex := sc.ex
	ex.mu.Lock()
	defer ex.mu.Unlock()
	switch {
	case seg[0] == "request" && len(seg) == 3 && seg[1] == "headers":
		v, ok := ex.req.get(lower(seg[2]))
		return []byte(v), ok
	case seg[0] == "request" && len(seg) == 2:
		switch seg[1] {
		case "path":
			return ex.reqHeader(":path")
		case "url_path":
			p, ok := ex.reqHeader(":path")
			if i := strings.IndexByte(string(p), '?'); i >= 0 {
				p = p[:i]
			}
			return p, ok
		case "query":
			p, _ := ex.reqHeader(":path")
			if i := strings.IndexByte(string(p), '?'); i >= 0 {
				return p[i+1:], true
			}
			return []byte{}, true
		case "host":
			return ex.reqHeader(":authority")
		case "method":
			return ex.reqHeader(":method")
		case "scheme":
			return ex.reqHeader(":scheme")
		case "id":
			return ex.reqHeader("x-request-id")
		case "protocol":
			return []byte(ex.protocol), true
		case "time":
			return int64Bytes(ex.start.UnixNano()), true
		}
		return nil, false
	case seg[0] == "response" && len(seg) == 2 && seg[1] == "code":
		if ex.resp == nil {
			return nil, false
		}
		st, _ := ex.resp.get(":status")
		n, err := strconv.Atoi(st)
		if err != nil {
			return nil, false
		}
		return int64Bytes(int64(n)), true
	case seg[0] == "response" && len(seg) == 3 && seg[1] == "headers":
		if ex.resp == nil {
			return nil, false
		}
		v, ok := ex.resp.get(lower(seg[2]))
		return []byte(v), ok
	case seg[0] == "route_metadata":
		return ex.routeMetadata(seg[1:])
	case seg[0] == "source" && len(seg) == 2 && seg[1] == "address":
		return []byte(ex.remoteAddr), true
	case seg[0] == "destination" && len(seg) == 2 && seg[1] == "address":
		return []byte(ex.localAddr), true
	}
	v, ok := ex.filterState["wasm."+path]
	return v, ok
}

// routeMetadata answers route_metadata: the metadata of the route the
// current request headers select (Envoy re-selects the route when a filter
// changes them), as a serialized envoy.config.core.v3.Metadata; with a
// path below it, filter_metadata.<namespace>.<field>... down to a string
// (its bytes), number (a little-endian double) or bool (one byte). No
// route is NOT_FOUND, as is a path to a nested struct or list (Envoy's
// serialization of those is not reproduced). ex.mu is held.
func (ex *exchange) routeMetadata(path []string) ([]byte, bool) {
	if ex.lis == nil {
		return nil, false
	}
	authority, _ := ex.req.get(":authority")
	p, _ := ex.req.get(":path")
	r := ex.lis.route(authority, p)
	if r == nil {
		return nil, false
	}
	if len(path) == 0 {
		if r.Metadata == nil {
			return []byte{}, true
		}
		b, err := proto.Marshal(r.Metadata)
		return b, err == nil
	}
	if path[0] != "filter_metadata" || len(path) < 3 {
		return nil, false
	}
	st := r.Metadata.GetFilterMetadata()[path[1]]
	if st == nil {
		return nil, false
	}
	v := st.GetFields()[path[2]]
	for _, k := range path[3:] {
		v = v.GetStructValue().GetFields()[k]
	}
	switch k := v.GetKind().(type) {
	case *structpb.Value_StringValue:
		return []byte(k.StringValue), true
	case *structpb.Value_NumberValue:
		b := make([]byte, 8)
		binary.LittleEndian.PutUint64(b, math.Float64bits(k.NumberValue))
		return b, true
	case *structpb.Value_BoolValue:
		if k.BoolValue {
			return []byte{1}, true
		}
		return []byte{0}, true
	}
	return nil, false
}
