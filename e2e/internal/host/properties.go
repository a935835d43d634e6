package host

import (
	"strconv"
	"strings"
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
	case seg[0] == "source" && len(seg) == 2 && seg[1] == "address":
		return []byte(ex.remoteAddr), true
	case seg[0] == "destination" && len(seg) == 2 && seg[1] == "address":
		return []byte(ex.localAddr), true
	}
	v, ok := ex.filterState["wasm."+path]
	return v, ok
}
