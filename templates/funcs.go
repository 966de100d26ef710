package templates

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"text/template"
	"text/template/parse"
	"time"
	"unsafe"

	"github.com/Masterminds/sprig/v3"
	"go.yaml.in/yaml/v3"

	"github.com/kvsync/kvsync/internal/kvkey"
)

// Record is one KV entry as the keys and history functions return it.
type Record struct {
	Key      string
	Value    string
	Revision uint64
	Created  time.Time
	Op       string // "PUT" for current values; history also has "DEL" and "PURGE"
}

// baseFuncs is the part of the function library that needs no render state:
// sprig and the JSON/YAML codecs. It is built once; the map is shared and must
// not be changed (Parse works on a copy).
var baseFuncs = sync.OnceValue(func() template.FuncMap {
	m := sprig.TxtFuncMap()
	m["fromJSON"] = fromJSON
	m["toJSON"] = toJSON
	m["fromYAML"] = fromYAML
	m["toYAML"] = toYAML
	addCompatFuncs(m)
	m["privateIP"] = privateIP
	m["interfaceIP"] = interfaceIP
	m["sockaddr"] = sockaddr
	return m
})

// binding ties the functions of one template clone to the render that is
// using the clone. r is nil while the clone sits in the pool.
type binding struct {
	tmpl   *template.Template
	r      *render
	ranges map[string]*printingRange // the template's, by marker
	opts   *Options                  // the template's
}

// funcs returns the key functions bound to b.
func (b *binding) funcs() template.FuncMap {
	return template.FuncMap{
		"key":      b.key,
		"keyOr":    b.keyOr,
		"keys":     b.keys,
		"tree":     b.tree,
		"exists":   b.exists,
		"revision": b.revision,
		"history":  b.history,
		"file":     b.file,

		// consul-template's names; see compat.go.
		"keyOrDefault": b.keyOrDefault,
		"keyExists":    b.exists,
		"ls":           b.ls,
		"safeLs":       b.safeLs,
	}
}

func (b *binding) key(ref string) (string, error) {
	if b.r == nil {
		return "", errNotRendering
	}
	return b.r.key(ref)
}

func (b *binding) keyOr(ref string, def any) (string, error) {
	if b.r == nil {
		return "", errNotRendering
	}
	return b.r.keyOr(ref, def)
}

// keys is the KV `keys` when given one string and sprig's `keys` (the keys of
// dicts) otherwise, so that sprig stays complete.
func (b *binding) keys(args ...any) (any, error) {
	if len(args) == 1 {
		if ref, ok := args[0].(string); ok {
			if b.r == nil {
				return nil, errNotRendering
			}
			if pr, ok := b.ranges[ref]; ok {
				return b.r.printRange(pr)
			}
			return b.r.keys(ref)
		}
	}
	out := []string{}
	for i, a := range args {
		m, ok := a.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("argument %d is %T; want one filter string, or dicts", i+1, a)
		}
		for k := range m {
			out = append(out, k)
		}
	}
	return out, nil
}

func (b *binding) tree(ref string) (map[string]any, error) {
	if b.r == nil {
		return nil, errNotRendering
	}
	return b.r.tree(ref)
}

func (b *binding) exists(ref string) (bool, error) {
	if b.r == nil {
		return false, errNotRendering
	}
	return b.r.exists(ref)
}

func (b *binding) revision(ref string) (uint64, error) {
	if b.r == nil {
		return 0, errNotRendering
	}
	return b.r.revision(ref)
}

func (b *binding) history(ref string) ([]Record, error) {
	if b.r == nil {
		return nil, errNotRendering
	}
	return b.r.history(ref)
}

// render is the state of one Render call.
type render struct {
	ctx     context.Context
	src     Source
	def     string
	deps    depsBuilder
	missing []string
	seen    map[string]struct{} // of missing

	lists    *sync.Pool  // of *[]Record, the template's; nil: allocate every list
	borrowed []*[]Record // from lists, given back by release
	out      *limitWriter
}

// maxBorrowed is how many lists one render takes from the pool; further ones
// are allocated. A template listing inside a range would otherwise hold every
// list it made until the render ends, whereas the collector can free each one
// after its iteration.
const maxBorrowed = 4

// records returns an empty list with room for n records. Lists are pooled
// per template: a render over many keys would otherwise allocate, zero and
// have the collector scan a large array every time. Once Execute returned
// nothing holds a list any more (template variables die with the execution,
// and no function keeps its arguments), so release can give them back.
func (r *render) records(n int) []Record {
	if n == 0 || r.lists == nil || len(r.borrowed) == maxBorrowed {
		return make([]Record, 0, n)
	}
	p, _ := r.lists.Get().(*[]Record)
	if p == nil {
		p = new([]Record)
	}
	if cap(*p) < n {
		*p = make([]Record, n)
	}
	*p = (*p)[:n] // what release must clear
	r.borrowed = append(r.borrowed, p)
	return (*p)[:0]
}

// release gives the borrowed lists back, cleared so that the pool does not
// keep old keys and values alive.
func (r *render) release() {
	for _, p := range r.borrowed {
		clear(*p)
		r.lists.Put(p)
	}
	r.borrowed = nil
}

func (r *render) miss(ref string) {
	if _, ok := r.seen[ref]; ok {
		return
	}
	if r.seen == nil {
		r.seen = make(map[string]struct{})
	}
	r.seen[ref] = struct{}{}
	r.missing = append(r.missing, ref)
}

// get reads one key and records it as a dependency.
func (r *render) get(ref string) (bucket, key string, e Entry, ok bool, err error) {
	bucket, key, err = splitRef(ref, r.def, refKey)
	if err != nil {
		return "", "", Entry{}, false, err
	}
	r.deps.key(bucket, key)
	e, ok = r.src.Get(bucket, key)
	return bucket, key, e, ok, nil
}

func (r *render) key(ref string) (string, error) {
	bucket, key, e, ok, err := r.get(ref)
	if err != nil {
		return "", err
	}
	if !ok {
		// Go on rendering to collect every missing key; Render fails at the end.
		r.miss(bucket + ":" + key)
		return "", nil
	}
	return valueString(e.Value), nil
}

func (r *render) keyOr(ref string, def any) (string, error) {
	_, _, e, ok, err := r.get(ref)
	if err != nil {
		return "", err
	}
	if ok {
		return valueString(e.Value), nil
	}
	return defaultString(def), nil
}

// defaultString is the default given to keyOr as a string.
func defaultString(def any) string {
	switch d := def.(type) {
	case nil:
		return ""
	case string:
		return d
	default:
		return fmt.Sprint(d)
	}
}

func (r *render) exists(ref string) (bool, error) {
	_, _, _, ok, err := r.get(ref)
	return ok, err
}

func (r *render) revision(ref string) (uint64, error) {
	_, _, e, ok, err := r.get(ref)
	if err != nil || !ok {
		return 0, err
	}
	return e.Revision, nil
}

// list reads the entries matching a filter and records the filter.
func (r *render) list(bucket, filter string) ([]Record, error) {
	r.deps.filter(bucket, filter)
	if err := r.ctx.Err(); err != nil {
		return nil, err
	}
	es := r.src.List(bucket, filter)
	recs := r.records(len(es))
	for i := range es {
		e := &es[i]
		if e.Op == OpDel || e.Op == OpPurge {
			continue
		}
		recs = append(recs, Record{Key: e.Key, Value: valueString(e.Value), Revision: e.Revision, Created: e.Created, Op: OpPut})
	}
	// Output must not depend on the order a Source happens to return.
	byKey := func(a, b Record) int { return cmp.Compare(a.Key, b.Key) }
	if !slices.IsSortedFunc(recs, byKey) {
		slices.SortFunc(recs, byKey)
	}
	// Full slice expression: an append in the template must copy, not write
	// into the pooled array.
	return recs[:len(recs):len(recs)], nil
}

func (r *render) keys(ref string) ([]Record, error) {
	bucket, filter, err := splitRef(ref, r.def, refFilter)
	if err != nil {
		return nil, err
	}
	return r.list(bucket, filter)
}

// tree nests the keys under prefix; see the package documentation.
func (r *render) tree(ref string) (map[string]any, error) {
	bucket, prefix, err := splitRef(ref, r.def, refPrefix)
	if err != nil {
		return nil, err
	}
	filter := ">"
	if prefix != "" {
		filter = prefix + ".>"
	}
	recs, err := r.list(bucket, filter)
	if err != nil {
		return nil, err
	}
	root := make(map[string]any)
	for _, rec := range recs {
		rest := rec.Key
		if prefix != "" {
			rest = strings.TrimPrefix(rest, prefix+".")
		}
		insert(root, strings.FieldsFunc(rest, func(c rune) bool { return c == '.' || c == '/' }), rec.Value)
	}
	return root, nil
}

// treeValue is the map key under which a node that is both a leaf and a parent
// keeps its value.
const treeValue = "_value"

// insert puts val at path below node. Keys arrive sorted, so "first wins"
// means the lexically first key wins a collision.
func insert(node map[string]any, path []string, val string) {
	if len(path) == 0 {
		if _, ok := node[treeValue]; !ok {
			node[treeValue] = val
		}
		return
	}
	for _, seg := range path[:len(path)-1] {
		switch c := node[seg].(type) {
		case map[string]any:
			node = c
		case string:
			m := map[string]any{treeValue: c}
			node[seg] = m
			node = m
		default:
			m := make(map[string]any)
			node[seg] = m
			node = m
		}
	}
	last := path[len(path)-1]
	switch c := node[last].(type) {
	case map[string]any:
		if _, ok := c[treeValue]; !ok {
			c[treeValue] = val
		}
	case string:
		// An earlier key already holds this leaf.
	default:
		node[last] = val
	}
}

func (r *render) history(ref string) ([]Record, error) {
	bucket, key, err := splitRef(ref, r.def, refKey)
	if err != nil {
		return nil, err
	}
	r.deps.key(bucket, key)
	es, err := r.src.History(r.ctx, bucket, key)
	if err != nil {
		return nil, fmt.Errorf("history %s:%s: %w", bucket, key, err)
	}
	recs := make([]Record, len(es))
	for i, e := range es {
		recs[i] = record(e)
	}
	return recs, nil
}

func record(e Entry) Record {
	return Record{Key: e.Key, Value: valueString(e.Value), Revision: e.Revision, Created: e.Created, Op: e.Op}
}

// valueString returns an entry's value as a string without copying it: a
// Source never modifies Entry.Value once it has handed it out (see Source),
// so the string stays what it was. This saves an allocation and a copy per
// key read, which dominates renders that range over many keys.
func valueString(b []byte) string {
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// refKind is what the key part of a "bucket:key" ref must be.
type refKind int

const (
	refKey    refKind = iota // a key
	refFilter                // a NATS wildcard filter
	refPrefix                // a key, or empty for the whole bucket
)

// splitRef splits ref into bucket and key (or filter, or prefix) and checks
// both against the rules of package kvkey. Errors wrap kvkey.ErrInvalid.
func splitRef(ref, def string, kind refKind) (bucket, key string, err error) {
	bucket, key = kvkey.Split(ref, def)
	if bucket == "" {
		if !strings.Contains(ref, ":") {
			return "", "", fmt.Errorf("ref %q names no bucket and the template has no default bucket: %w", ref, kvkey.ErrInvalid)
		}
	}
	if err := kvkey.ValidBucket(bucket); err != nil {
		return "", "", fmt.Errorf("ref %q: %w", ref, err)
	}
	switch kind {
	case refFilter:
		err = kvkey.ValidFilter(key)
	case refPrefix:
		if key != "" {
			err = kvkey.Valid(key)
		}
	default:
		err = kvkey.Valid(key)
	}
	if err != nil {
		return "", "", fmt.Errorf("ref %q: %w", ref, err)
	}
	return bucket, key, nil
}

// literalKind says what the first argument of the key function fn must be;
// false if fn is not a key function.
func literalKind(fn string) (refKind, bool) {
	switch fn {
	case "key", "keyOr", "exists", "revision", "history", "keyOrDefault", "keyExists":
		return refKey, true
	case "keys":
		return refFilter, true
	case "tree", "ls", "safeLs":
		return refPrefix, true
	}
	return 0, false
}

// checkLiterals checks the refs the template passes to key functions as string
// literals, so that `kvsync validate` reports them without a render.
func (t *Template) checkLiterals() []error {
	var errs []error
	for _, tm := range t.root.Templates() {
		if tm.Tree == nil || tm.Root == nil {
			continue
		}
		tree := tm.Tree
		walk(tm.Root, func(n parse.Node) {
			c, ok := n.(*parse.CommandNode)
			if !ok || len(c.Args) < 2 {
				return
			}
			id, ok := c.Args[0].(*parse.IdentifierNode)
			if !ok {
				return
			}
			kind, ok := literalKind(id.Ident)
			if !ok {
				return
			}
			s, ok := c.Args[1].(*parse.StringNode)
			if !ok {
				return
			}
			if _, _, err := splitRef(s.Text, t.opts.DefaultBucket, kind); err != nil {
				loc, _ := tree.ErrorContext(c)
				errs = append(errs, fmt.Errorf("%s: %s: %w", loc, id.Ident, err))
			}
		})
	}
	return errs
}

// walk calls fn for n and every node below it, parents first.
func walk(n parse.Node, fn func(parse.Node)) {
	switch n := n.(type) {
	case *parse.ListNode:
		if n == nil {
			return
		}
	case *parse.PipeNode:
		if n == nil {
			return
		}
	}
	fn(n)
	switch n := n.(type) {
	case *parse.ListNode:
		for _, c := range n.Nodes {
			walk(c, fn)
		}
	case *parse.ActionNode:
		walk(n.Pipe, fn)
	case *parse.PipeNode:
		for _, c := range n.Cmds {
			walk(c, fn)
		}
	case *parse.CommandNode:
		for _, a := range n.Args {
			walk(a, fn)
		}
	case *parse.IfNode:
		walkBranch(&n.BranchNode, fn)
	case *parse.RangeNode:
		walkBranch(&n.BranchNode, fn)
	case *parse.WithNode:
		walkBranch(&n.BranchNode, fn)
	case *parse.TemplateNode:
		walk(n.Pipe, fn)
	case *parse.ChainNode:
		walk(n.Node, fn) // (pipeline).Field
	}
}

func walkBranch(b *parse.BranchNode, fn func(parse.Node)) {
	walk(b.Pipe, fn)
	walk(b.List, fn)
	walk(b.ElseList, fn)
}

// fromJSON decodes one JSON value. Numbers stay json.Number so that large
// integers are not rounded through float64.
func fromJSON(s string) (any, error) {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("decode JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("decode JSON: data after the first value")
	}
	return v, nil
}

// toJSON encodes v with sorted map keys, without HTML escaping and without a
// trailing newline.
func toJSON(v any) (string, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return "", fmt.Errorf("encode JSON: %w", err)
	}
	return strings.TrimSuffix(buf.String(), "\n"), nil
}

// fromYAML decodes the first YAML document of s. Maps come out as
// map[string]any whatever their key type, so the result can go through toJSON.
func fromYAML(s string) (any, error) {
	var v any
	if err := yaml.Unmarshal([]byte(s), &v); err != nil {
		return nil, fmt.Errorf("decode YAML: %w", err)
	}
	return stringKeys(v), nil
}

func stringKeys(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			v[k] = stringKeys(e)
		}
		return v
	case map[any]any:
		m := make(map[string]any, len(v))
		for k, e := range v {
			m[fmt.Sprint(k)] = stringKeys(e)
		}
		return m
	case []any:
		for i, e := range v {
			v[i] = stringKeys(e)
		}
		return v
	default:
		return v
	}
}

// toYAML encodes v with sorted map keys, two-space indentation and no trailing
// newline.
func toYAML(v any) (string, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(yamlNumbers(v)); err != nil {
		return "", fmt.Errorf("encode YAML: %w", err)
	}
	if err := enc.Close(); err != nil {
		return "", fmt.Errorf("encode YAML: %w", err)
	}
	return strings.TrimSuffix(buf.String(), "\n"), nil
}

// yamlNumbers returns v with every json.Number (from fromJSON) replaced by a
// YAML number node holding the same digits; the YAML encoder would otherwise
// write it as a quoted string. v itself is not modified.
func yamlNumbers(v any) any {
	switch v := v.(type) {
	case json.Number:
		tag := "!!int"
		if strings.ContainsAny(string(v), ".eE") {
			tag = "!!float"
		}
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: tag, Value: string(v)}
	case map[string]any:
		m := make(map[string]any, len(v))
		for k, e := range v {
			m[k] = yamlNumbers(e)
		}
		return m
	case []any:
		s := make([]any, len(v))
		for i, e := range v {
			s[i] = yamlNumbers(e)
		}
		return s
	default:
		return v
	}
}
