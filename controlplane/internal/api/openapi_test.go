package api

import (
	"encoding/json"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/keygate/keygate/controlplane"
	"github.com/keygate/keygate/internal/wire"
)

// TestOpenAPIAgreesWithServer checks openapi.json against the live server
// (real HTTP, real store): every example in the document is sent where it
// belongs and must be accepted; from a valid body, removing any member a
// schema marks required (or every alternative of a oneOf of required
// members), or the whole body when the request body is required, must be
// refused with a 400 that names it. An example the test cannot place fails
// it, so the document cannot grow examples nobody checks. An object with
// only the members its schema requires must be accepted too, and every
// answer must be documented for its status and carry the members its
// schema requires.
func TestOpenAPIAgreesWithServer(t *testing.T) {
	var doc map[string]any
	if err := json.Unmarshal(controlplane.OpenAPI, &doc); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, sqliteOpener)
	schemas := doc["components"].(map[string]any)["schemas"].(map[string]any)

	// Every example in the document, by JSON pointer.
	examples := map[string]bool{}
	var findExamples func(v any, ptr string)
	findExamples = func(v any, ptr string) {
		switch n := v.(type) {
		case map[string]any:
			for k, c := range n {
				if k == "example" || k == "examples" {
					examples[ptr+"/"+k] = false
				}
				findExamples(c, ptr+"/"+escapePtr(k))
			}
		case []any:
			for i, c := range n {
				findExamples(c, ptr+"/"+strconv.Itoa(i))
			}
		}
	}
	findExamples(doc, "")

	seq := int64(0)
	// send posts body to the route (a fresh key for {id}: rotations need
	// one each) and returns the answer.
	send := func(method, path string, body any) *response {
		t.Helper()
		template := path
		token := adminToken
		switch path {
		case "/v1/usage":
			// The instance token of the batch's own instance.
			node, boot := "n", "b"
			if m, ok := body.(map[string]any); ok {
				if _, has := m["seq"]; has {
					seq++
					m["seq"] = seq
				}
				if n, ok := m["node"].(string); ok && n != "" {
					node = n
				}
				if b, ok := m["boot"].(string); ok && b != "" {
					boot = b
				}
			}
			token = e.instanceToken(node, boot)
		case "/v1/nodes/register":
			// A boot id is registered once: a fresh one per request.
			token = filterToken
			if m, ok := body.(map[string]any); ok {
				if _, has := m["boot"]; has {
					seq++
					m["boot"] = "boot" + strconv.FormatInt(seq, 10)
				}
			}
		}
		if m, ok := body.(map[string]any); ok {
			// Plans: a fresh id per created plan; a plan the body names exists.
			if id, ok := m["id"].(string); ok && path == "/v1/plans" {
				seq++
				m["id"] = id + "-" + strconv.FormatInt(seq, 10)
			}
			if id, ok := m["plan_id"].(string); ok && wire.ValidPlanID(id) {
				e.admin("POST", "/v1/plans", map[string]any{"id": id})
			}
		}
		if strings.HasPrefix(path, "/v1/plans/{id}") {
			seq++
			id := "plan-" + strconv.FormatInt(seq, 10)
			if r := e.admin("POST", "/v1/plans", map[string]any{"id": id}); r.status != http.StatusCreated {
				t.Fatalf("create plan: %d %s", r.status, r.body)
			}
			path = strings.ReplaceAll(path, "{id}", id)
		}
		if strings.Contains(path, "{id}") {
			k := e.createKey(map[string]any{"hosts": []string{"api.example.com"}})
			path = strings.ReplaceAll(path, "{id}", k.ID)
		}
		var r *response
		if body == nil {
			r = e.call(method, path, token, nil)
		} else {
			raw, err := json.Marshal(body)
			if err != nil {
				t.Fatal(err)
			}
			r = e.call(method, path, token, raw)
		}
		checkAnswer(t, doc, method, template, r)
		return r
	}
	accepted := func(what string, r *response) {
		t.Helper()
		if r.status/100 != 2 {
			t.Errorf("%s: refused %d %s", what, r.status, r.body)
		}
	}
	refused := func(what, field string, r *response) {
		t.Helper()
		if r.status != http.StatusBadRequest {
			t.Errorf("%s: answered %d, want 400: %s", what, r.status, r.body)
			return
		}
		if field == "" {
			return
		}
		var p problem
		r.json(t, &p)
		for _, fe := range p.Errors {
			if fe.Field == field || strings.HasPrefix(fe.Field, field+".") {
				return
			}
		}
		t.Errorf("%s: the 400 does not name %s: %s", what, field, r.body)
	}

	routes := 0
	paths := doc["paths"].(map[string]any)
	for _, path := range sortedKeys(paths) {
		ops := paths[path].(map[string]any)
		for _, method := range sortedKeys(ops) {
			op, ok := ops[method].(map[string]any)
			if !ok || op["requestBody"] == nil {
				continue
			}
			method = strings.ToUpper(method)
			rb := op["requestBody"].(map[string]any)
			media := rb["content"].(map[string]any)["application/json"].(map[string]any)
			opPtr := "/paths/" + escapePtr(path) + "/" + strings.ToLower(method) + "/requestBody/content/application~1json"
			var bodies []any
			if exs, ok := media["examples"].(map[string]any); ok {
				for _, name := range sortedKeys(exs) {
					v := exs[name].(map[string]any)["value"]
					accepted(method+" "+path+" example "+name, send(method, path, deepCopy(v)))
					bodies = append(bodies, v)
				}
				examples[opPtr+"/examples"] = true
			}
			if rb["required"] == true {
				refused(method+" "+path+" without a body", "", send(method, path, nil))
			}
			if len(bodies) == 0 {
				bodies = append(bodies, map[string]any{})
			}
			routes++
			base := bodies[0]
			// Walk the body's schema: place every named schema's examples
			// where it occurs and remove every required member.
			var walk func(node any, at []any, depth int)
			walk = func(node any, at []any, depth int) {
				n, ok := node.(map[string]any)
				if !ok || depth > 8 {
					return
				}
				if ref, ok := n["$ref"].(string); ok {
					name := strings.TrimPrefix(ref, "#/components/schemas/")
					s := schemas[name].(map[string]any)
					if exs, ok := s["examples"].([]any); ok {
						for i, ex := range exs {
							body := deepCopy(base)
							body = setAt(body, at, deepCopy(ex))
							accepted(method+" "+path+" "+name+" example "+strconv.Itoa(i)+" at "+fieldName(at), send(method, path, body))
						}
						examples["/components/schemas/"+name+"/examples"] = true
					}
					walk(s, at, depth+1)
					return
				}
				instance := instanceAt(bodies, n, at)
				if obj, ok := instance.(map[string]any); ok && n["required"] != nil {
					// The members the schema requires (and one required
					// alternative) are enough.
					minimal := map[string]any{}
					for _, req := range stringList(n["required"]) {
						minimal[req] = obj[req]
					}
					for _, alt := range anyList(n["oneOf"]) {
						if alts := stringList(alt.(map[string]any)["required"]); len(alts) > 0 && hasAll(obj, alts) {
							for _, a := range alts {
								minimal[a] = obj[a]
							}
							break
						}
					}
					accepted(method+" "+path+" with only the required members at "+fieldName(at),
						send(method, path, setAt(deepCopy(base), at, minimal)))
				}
				if obj, ok := instance.(map[string]any); ok {
					for _, req := range stringList(n["required"]) {
						body := setAt(deepCopy(base), at, without(obj, req))
						field := fieldName(append(append([]any{}, at...), req))
						refused(method+" "+path+" without "+field, field, send(method, path, body))
					}
					for _, alt := range anyList(n["oneOf"]) {
						alts := stringList(alt.(map[string]any)["required"])
						if len(alts) == 0 || !hasAll(obj, alts) {
							continue
						}
						stripped := obj
						for _, a := range alts {
							stripped = without(stripped, a)
						}
						body := setAt(deepCopy(base), at, stripped)
						refused(method+" "+path+" without "+strings.Join(alts, ",")+" at "+fieldName(at), fieldName(at), send(method, path, body))
					}
				}
				if props, ok := n["properties"].(map[string]any); ok {
					for _, name := range sortedKeys(props) {
						walk(props[name], append(append([]any{}, at...), name), depth+1)
					}
				}
				if items, ok := n["items"]; ok {
					walk(items, append(append([]any{}, at...), 0), depth+1)
				}
				for _, k := range []string{"oneOf", "anyOf", "allOf"} {
					for _, sub := range anyList(n[k]) {
						if m, ok := sub.(map[string]any); ok && len(m) == 1 && m["required"] != nil {
							continue // an alternative of required members, checked above
						}
						walk(sub, at, depth+1)
					}
				}
			}
			walk(media["schema"], nil, 0)
		}
	}
	if routes < 7 {
		t.Fatalf("only %d routes with a request body in the document", routes)
	}
	for ptr, checked := range examples {
		if !checked {
			t.Errorf("example %s is not checked against the server (place it in a request body schema)", ptr)
		}
	}
}

// checkAnswer checks that an answer of the live server is documented for
// its route and status and carries every member its schema requires.
func checkAnswer(t *testing.T, doc map[string]any, method, template string, r *response) {
	t.Helper()
	op := doc["paths"].(map[string]any)[template].(map[string]any)[strings.ToLower(method)].(map[string]any)
	resp, ok := op["responses"].(map[string]any)[strconv.Itoa(r.status)].(map[string]any)
	if !ok {
		t.Errorf("%s %s answered %d, which the document does not list: %s", method, template, r.status, r.body)
		return
	}
	if ref, ok := resp["$ref"].(string); ok {
		resp = doc["components"].(map[string]any)["responses"].(map[string]any)[strings.TrimPrefix(ref, "#/components/responses/")].(map[string]any)
	}
	content, _ := resp["content"].(map[string]any)
	ct, _, _ := strings.Cut(r.header.Get("Content-Type"), ";")
	media, ok := content[ct].(map[string]any)
	if !ok {
		if len(content) > 0 {
			t.Errorf("%s %s %d: Content-Type %q is not documented", method, template, r.status, ct)
		}
		return
	}
	var v any
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Errorf("%s %s %d: %v", method, template, r.status, err)
		return
	}
	if missing := missingRequired(doc, media["schema"], v, ""); len(missing) > 0 {
		t.Errorf("%s %s %d: the answer lacks required members %v: %s", method, template, r.status, missing, r.body)
	}
}

// missingRequired lists the members that schema requires and v lacks,
// following $ref, allOf, the non-null branch of oneOf, properties and
// items.
func missingRequired(doc map[string]any, schema, v any, at string) []string {
	n, ok := schema.(map[string]any)
	if !ok || v == nil {
		return nil
	}
	if ref, ok := n["$ref"].(string); ok {
		name := strings.TrimPrefix(ref, "#/components/schemas/")
		return missingRequired(doc, doc["components"].(map[string]any)["schemas"].(map[string]any)[name], v, at)
	}
	var out []string
	for _, sub := range anyList(n["allOf"]) {
		out = append(out, missingRequired(doc, sub, v, at)...)
	}
	for _, sub := range anyList(n["oneOf"]) {
		if m, ok := sub.(map[string]any); ok && m["$ref"] != nil {
			out = append(out, missingRequired(doc, sub, v, at)...)
		}
	}
	switch x := v.(type) {
	case map[string]any:
		for _, req := range stringList(n["required"]) {
			if _, ok := x[req]; !ok {
				out = append(out, strings.TrimPrefix(at+"."+req, "."))
			}
		}
		if props, ok := n["properties"].(map[string]any); ok {
			for name, sub := range props {
				if val, ok := x[name]; ok {
					out = append(out, missingRequired(doc, sub, val, strings.TrimPrefix(at+"."+name, "."))...)
				}
			}
		}
	case []any:
		for i, item := range x {
			out = append(out, missingRequired(doc, n["items"], item, at+"["+strconv.Itoa(i)+"]")...)
		}
	}
	return out
}

// instanceAt returns a valid value for the schema node at path: the value
// there in an example body, or the first example of the node's schema.
func instanceAt(bodies []any, node map[string]any, at []any) any {
	for _, b := range bodies {
		if v, ok := getAt(b, at); ok && v != nil {
			return v
		}
	}
	if exs, ok := node["examples"].([]any); ok && len(exs) > 0 {
		return exs[0]
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func escapePtr(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

func deepCopy(v any) any {
	b, _ := json.Marshal(v)
	var out any
	_ = json.Unmarshal(b, &out)
	return out
}

func stringList(v any) []string {
	var out []string
	for _, x := range anyList(v) {
		if s, ok := x.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

func anyList(v any) []any {
	l, _ := v.([]any)
	return l
}

func hasAll(obj map[string]any, names []string) bool {
	for _, n := range names {
		if _, ok := obj[n]; !ok {
			return false
		}
	}
	return true
}

func without(obj map[string]any, name string) map[string]any {
	out := map[string]any{}
	for k, v := range obj {
		if k != name {
			out[k] = v
		}
	}
	return out
}

// fieldName renders a path as the server names fields: rate.limit,
// counts[0].key_id.
func fieldName(at []any) string {
	var b strings.Builder
	for _, p := range at {
		switch x := p.(type) {
		case string:
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(x)
		case int:
			b.WriteString("[" + strconv.Itoa(x) + "]")
		}
	}
	return b.String()
}

func getAt(v any, at []any) (any, bool) {
	for _, p := range at {
		switch x := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil, false
			}
			if v, ok = m[x]; !ok {
				return nil, false
			}
		case int:
			l, ok := v.([]any)
			if !ok || x >= len(l) {
				return nil, false
			}
			v = l[x]
		}
	}
	return v, true
}

// setAt returns root with the value at path replaced by val, creating
// objects on the way; an array on the path becomes a one-element array
// (so that an example placed in a list is its only item).
func setAt(root any, at []any, val any) any {
	if len(at) == 0 {
		return val
	}
	switch x := at[0].(type) {
	case string:
		m, ok := root.(map[string]any)
		if !ok {
			m = map[string]any{}
		}
		m[x] = setAt(m[x], at[1:], val)
		return m
	case int:
		var cur any
		if l, ok := root.([]any); ok && x < len(l) {
			cur = l[x]
		}
		l := make([]any, x+1)
		l[x] = setAt(cur, at[1:], val)
		return l
	}
	return root
}
