package templates

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/template/parse"
)

// builtins are text/template's own functions: always defined, and only
// Options.Denylist can take them away (at parse time).
var builtins = []string{
	"and", "call", "eq", "ge", "gt", "html", "index", "js", "le", "len", "lt",
	"ne", "not", "or", "print", "printf", "println", "slice", "urlquery",
}

// IsFunc reports whether name is a function templates can call: sprig's,
// kvsync's (with the consul-template names), or one of text/template's
// builtins.
func IsFunc(name string) bool {
	if slices.Contains(builtins, name) {
		return true
	}
	if _, ok := (&binding{}).funcs()[name]; ok {
		return true
	}
	_, ok := baseFuncs()[name]
	return ok
}

// funcNames returns every name IsFunc accepts, sorted.
func funcNames() []string {
	m := maps.Clone(baseFuncs())
	maps.Copy(m, (&binding{}).funcs())
	names := slices.AppendSeq(slices.Clone(builtins), maps.Keys(m))
	slices.Sort(names)
	return slices.Compact(names)
}

// consulOnly are consul-template functions with no kvsync counterpart; an
// unknown-function error for one of them says so.
var consulOnly = map[string]bool{
	"caLeaf": true, "caRoots": true, "connect": true, "datacenters": true, "exportedServices": true,
	"node": true, "nodes": true, "partitions": true, "peerings": true, "pkiCert": true,
	"secret": true, "secrets": true, "service": true, "services": true, "safeTree": true,
	"nomadService": true, "nomadServices": true, "nomadVar": true, "nomadVarExists": true,
	"nomadVarList": true, "nomadVarListSafe": true,
	"scratch": true, "plugin": true, "writeToFile": true, "executeTemplate": true, "timestamp": true,
	"loop": true, "explode": true, "explodeMap": true, "mergeMap": true, "mergeMapWithOverride": true,
	"byKey": true, "byTag": true, "byPort": true, "byMeta": true, "splitToMap": true,
	"containsAll": true, "containsAny": true, "containsNone": true, "containsNotAll": true, "in": true,
	"envOrDefault": true, "mustEnv": true, "hmacSHA256Hex": true,
	"subtract": true, "multiply": true, "divide": true, "modulo": true, "minimum": true, "maximum": true,
	"spew_dump": true, "spew_printf": true, "spew_sdump": true, "spew_sprintf": true,
}

// checkFuncs parses text without checking function names and returns a
// syntax error, or else one error per call of a function that is not in
// funcs (nor a builtin), is denylisted, or is `file` without a folder. text/template would
// stop at the first unknown function; this reports them all, with their line.
func checkFuncs(src, text string, o Options, funcs map[string]any) []error {
	tr := parse.New(src)
	tr.Mode = parse.SkipFuncCheck
	trees := map[string]*parse.Tree{}
	if _, err := tr.Parse(text, o.LeftDelim, o.RightDelim, trees); err != nil {
		return []error{trimParseError(err)}
	}
	type found struct {
		pos parse.Pos
		err error
	}
	var all []found
	seen := map[*parse.Tree]bool{}
	for _, t := range append([]*parse.Tree{tr}, slices.Collect(maps.Values(trees))...) {
		if seen[t] || t.Root == nil {
			continue
		}
		seen[t] = true
		walk(t.Root, func(n parse.Node) {
			id, ok := n.(*parse.IdentifierNode)
			if !ok {
				return
			}
			var msg string
			_, defined := funcs[id.Ident]
			switch {
			case slices.Contains(o.Denylist, id.Ident):
				msg = fmt.Sprintf("function %q is denied by function_denylist", id.Ident)
			case id.Ident == "file" && o.Files == nil:
				msg = `function "file" needs file_root: the folder it may read from`
			case defined || slices.Contains(builtins, id.Ident):
				return
			case consulOnly[id.Ident]:
				msg = fmt.Sprintf("function %q not defined (a consul-template function kvsync has no counterpart for; see docs/MIGRATING.md)", id.Ident)
			default:
				msg = fmt.Sprintf("function %q not defined", id.Ident)
			}
			all = append(all, found{n.Position(), fmt.Errorf("%s: %s", lineOf(t, n), msg)})
		})
	}
	// Every tree was parsed from text: report in the order of the text.
	slices.SortStableFunc(all, func(a, b found) int { return cmp.Compare(a.pos, b.pos) })
	errs := make([]error, len(all))
	for i, f := range all {
		errs[i] = f.err
	}
	return errs
}

// lineOf is "name:line" of n, as text/template names positions in its parse
// errors.
func lineOf(t *parse.Tree, n parse.Node) string {
	loc, _ := t.ErrorContext(n) // name:line:col
	if i := strings.LastIndexByte(loc, ':'); i > 0 {
		return loc[:i]
	}
	return loc
}

// trimParseError drops the "template: " text/template puts before its parse
// errors: the caller says which template.
func trimParseError(err error) error {
	if s, ok := strings.CutPrefix(err.Error(), "template: "); ok {
		return errors.New(s)
	}
	return err
}
