package templates

import (
	"crypto/rand"
	"encoding/hex"
	"strconv"
	"text/template"
	"text/template/parse"
)

// Printing ranges.
//
// The commonest shape of a template over many keys is a range over `keys`
// whose body only prints fields of each record:
//
//	{{ range keys "upstreams.>" }}server {{ .Value }}; # {{ .Key }}
//	{{ end }}
//
// text/template executes such a body by reflection, record by record: two
// field lookups by name and two prints through fmt per record, ~90 % of a
// 10,000-key render. Parse finds every range of this shape and executes it
// directly: the `keys` call is the same (same dependency record, same
// errors), the body's pieces are written in the same order and with the same
// bytes as text/template writes them, and the range's `else` branch still runs
// when no key matches.
//
// A range qualifies when
//   - its pipeline is `keys "literal"`, declaring no variable, one ($r :=)
//     or two ($i, $r :=), never assigning (=) to an outer one;
//   - its body holds only text and actions that print one field of the
//     record, `.F` or `$r.F`, where F is Key, Value, Op, Revision or Created.
//
// Anything else (a pipe, a function call, `if`, the index variable, a
// comment kept by the parser, break/continue) leaves the range to
// text/template. TestFastRangeSameAsTemplate and FuzzFastRange render every
// shape both ways and require the same output, error, dependencies and
// missing keys.
//
// How: the range's `keys` argument is rewritten to a marker string that holds
// a per-template random nonce and the range's number, and its body is
// emptied. `keys` given a marker (which no template text can produce: the
// literal was checked before the rewrite, and a computed string cannot guess
// the nonce) lists the filter, writes the whole body for every record into
// the render's output, and returns a one-element list, so that text/template
// runs the emptied body once, or an empty list, so that it runs the else
// branch. A write error ends the render with that error, as it does in
// text/template.

// rangeField is a field of a Record a printing range prints.
type rangeField uint8

const (
	fieldNone rangeField = iota // a text piece
	fieldKey
	fieldValue
	fieldOp
	fieldRevision
	fieldCreated
)

var rangeFields = map[string]rangeField{
	"Key": fieldKey, "Value": fieldValue, "Op": fieldOp, "Revision": fieldRevision, "Created": fieldCreated,
}

// rangePiece is one piece of a printing range's body: text, or a field.
type rangePiece struct {
	text  []byte
	field rangeField
}

// printingRange is one range executed directly.
type printingRange struct {
	ref  string // the literal given to keys
	body []rangePiece
}

// once is the list a printing range returns to make text/template run its
// emptied body (once), and none the one that makes it run the else branch.
var (
	once = []struct{}{{}}
	none = []struct{}{}
)

// compileRanges rewrites every printing range of root's templates (see
// above) and returns them by marker; nil when there is none.
func compileRanges(root *template.Template) map[string]*printingRange {
	var out map[string]*printingRange
	nonce := ""
	for _, tm := range root.Templates() {
		if tm.Tree == nil || tm.Root == nil {
			continue
		}
		walk(tm.Root, func(n parse.Node) {
			rn, ok := n.(*parse.RangeNode)
			if !ok {
				return
			}
			arg, pr := printing(rn)
			if pr == nil {
				return
			}
			if nonce == "" {
				var b [12]byte
				_, _ = rand.Read(b[:]) // never fails (crypto/rand)
				nonce = hex.EncodeToString(b[:])
			}
			if out == nil {
				out = make(map[string]*printingRange)
			}
			marker := "\x00kvsync-range " + nonce + " " + strconv.Itoa(len(out))
			out[marker] = pr
			arg.Text = marker // Quoted stays: messages show the literal
			rn.List.Nodes = nil
		})
	}
	return out
}

// printing returns the literal argument node and the compiled form of rn when
// rn is a printing range; nil otherwise.
func printing(rn *parse.RangeNode) (*parse.StringNode, *printingRange) {
	p := rn.Pipe
	if p == nil || p.IsAssign || len(p.Decl) > 2 || len(p.Cmds) != 1 || rn.List == nil {
		return nil, nil
	}
	args := p.Cmds[0].Args
	if len(args) != 2 {
		return nil, nil
	}
	if id, ok := args[0].(*parse.IdentifierNode); !ok || id.Ident != "keys" {
		return nil, nil
	}
	lit, ok := args[1].(*parse.StringNode)
	if !ok {
		return nil, nil
	}
	elem := "" // the element variable, if declared
	if len(p.Decl) > 0 {
		elem = p.Decl[len(p.Decl)-1].Ident[0]
	}
	pr := &printingRange{ref: lit.Text}
	for _, n := range rn.List.Nodes {
		switch n := n.(type) {
		case *parse.TextNode:
			pr.body = append(pr.body, rangePiece{text: n.Text})
		case *parse.ActionNode:
			f, ok := printedField(n.Pipe, elem)
			if !ok {
				return nil, nil
			}
			pr.body = append(pr.body, rangePiece{field: f})
		default:
			return nil, nil
		}
	}
	return lit, pr
}

// printedField returns the record field an action's pipeline prints, when it
// is nothing but `.F` or `$elem.F`.
func printedField(p *parse.PipeNode, elem string) (rangeField, bool) {
	if p == nil || len(p.Decl) > 0 || len(p.Cmds) != 1 || len(p.Cmds[0].Args) != 1 {
		return fieldNone, false
	}
	var ident []string
	switch a := p.Cmds[0].Args[0].(type) {
	case *parse.FieldNode:
		ident = a.Ident
	case *parse.VariableNode:
		if elem == "" || len(a.Ident) != 2 || a.Ident[0] != elem {
			return fieldNone, false
		}
		ident = a.Ident[1:]
	default:
		return fieldNone, false
	}
	if len(ident) != 1 {
		return fieldNone, false
	}
	f, ok := rangeFields[ident[0]]
	return f, ok
}

// printRange lists pr's filter, as `keys` does, and writes its body for
// every record into the render's output.
func (r *render) printRange(pr *printingRange) ([]struct{}, error) {
	recs, err := r.keys(pr.ref)
	if err != nil {
		return nil, err
	}
	w := r.out
	var num [20]byte // a printed revision
	for i := range recs {
		rec := &recs[i]
		for _, p := range pr.body {
			switch p.field {
			case fieldNone:
				w.write(p.text)
			case fieldKey:
				w.writeString(rec.Key)
			case fieldValue:
				w.writeString(rec.Value)
			case fieldOp:
				w.writeString(rec.Op)
			case fieldRevision:
				w.write(strconv.AppendUint(num[:0], rec.Revision, 10))
			case fieldCreated:
				w.writeString(rec.Created.String())
			}
			if w.err != nil {
				return nil, w.err
			}
		}
	}
	if len(recs) == 0 {
		return none, nil
	}
	return once, nil
}
