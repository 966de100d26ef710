package templates

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestParseReportsEveryFunction(t *testing.T) {
	text := "a\n{{ nosuchfn }}\n{{ define \"sub\" }}{{ service \"web\" }}{{ end }}\n{{ env \"HOME\" | upper }}{{ file \"x\" }}\n{{ if call .F }}{{ end }}{{ expandenv \"$X\" }}\n{{ (env \"X\").Y }}"
	_, err := Parse("nginx", text, Options{SourceName: "nginx.conf.tmpl", Denylist: []string{"env", "expandenv", "call"}})
	var pe *ParseError
	if !errors.As(err, &pe) {
		t.Fatalf("Parse error %v, want a *ParseError", err)
	}
	var got []string
	for _, e := range pe.Errs {
		got = append(got, e.Error())
	}
	want := []string{
		`nginx.conf.tmpl:2: function "nosuchfn" not defined`,
		`nginx.conf.tmpl:3: function "service" not defined (a consul-template function kvsync has no counterpart for; see docs/MIGRATING.md)`,
		`nginx.conf.tmpl:4: function "env" is denied by function_denylist`,
		`nginx.conf.tmpl:4: function "file" needs file_root: the folder it may read from`,
		`nginx.conf.tmpl:5: function "call" is denied by function_denylist`,
		`nginx.conf.tmpl:5: function "expandenv" is denied by function_denylist`,
		`nginx.conf.tmpl:6: function "env" is denied by function_denylist`,
	}
	if !slices.Equal(got, want) {
		t.Fatalf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !strings.HasPrefix(err.Error(), "parse nginx: nginx.conf.tmpl:2: ") {
		t.Errorf("Error()=%q, want it to start with the template name and the first problem", err)
	}
}

func TestParseSyntaxErrorFirst(t *testing.T) {
	// The reproduction: a syntax error stops the parse, and is what
	// is reported.
	_, err := Parse("t", "ok\n{{ if }}{{ nosuchfn }}", Options{SourceName: "t.tmpl"})
	if err == nil || !strings.Contains(err.Error(), "t.tmpl:2: missing value for if") {
		t.Fatalf("Parse error %v, want the syntax error with its line", err)
	}
	if strings.Contains(err.Error(), "template: ") {
		t.Errorf("Parse error %q repeats text/template's prefix", err)
	}
}

func TestDenylist(t *testing.T) {
	// Denylisted functions that the template does not use: it parses, and
	// the rendering clone does not have them.
	tmpl, err := Parse("t", `{{ key "app.name" | upper }}`, Options{DefaultBucket: "app", Denylist: []string{"env", "keys", "file", "printf"}})
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	res, err := tmpl.Render(context.Background(), fixture())
	if err != nil || string(res.Output) != "SHOP" {
		t.Fatalf("Render=%q, %v", res.Output, err)
	}
	b, err := tmpl.newBinding()
	if err != nil {
		t.Fatal(err)
	}
	// A clone's own template text can only call what its function map
	// holds: parsing more text into it shows what that is.
	for _, fn := range []string{"env", "keys", "file"} {
		if _, err := b.tmpl.New("probe").Parse("{{ " + fn + " }}"); err == nil || !strings.Contains(err.Error(), "not defined") {
			t.Errorf("%s is callable in a rendering clone despite the denylist (err %v)", fn, err)
		}
	}
	if _, err := b.tmpl.New("probe").Parse(`{{ upper "x" }}`); err != nil {
		t.Errorf("upper is not callable: %v", err)
	}

	for _, tt := range []struct{ name, fn, want string }{
		{"unknown name", "nosuch", `denylist: "nosuch" is not a template function`},
		{"empty name", "", `denylist: "" is not a template function`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Parse("t", "x", Options{Denylist: []string{tt.fn}}); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Parse error %v, want %q", err, tt.want)
			}
		})
	}
}

func TestIsFunc(t *testing.T) {
	for _, tt := range []struct {
		name string
		want bool
	}{
		{"env", true}, {"key", true}, {"keyOrDefault", true}, {"toTOML", true}, {"printf", true},
		{"call", true}, {"file", true}, {"privateIP", true}, {"service", false}, {"", false}, {"Key", false},
	} {
		if got := IsFunc(tt.name); got != tt.want {
			t.Errorf("IsFunc(%q)=%v, want %v", tt.name, got, tt.want)
		}
	}
	names := funcNames()
	if !slices.IsSorted(names) || !slices.Contains(names, "ls") || !slices.Contains(names, "len") {
		t.Errorf("funcNames() is not sorted or misses ls/len: %d names", len(names))
	}
	for _, n := range names {
		if !IsFunc(n) {
			t.Errorf("funcNames() has %q, which IsFunc rejects", n)
		}
	}
	for n := range consulOnly {
		if IsFunc(n) {
			t.Errorf("%q is marked consul-template only but is defined", n)
		}
	}
}

func TestDelimiters(t *testing.T) {
	o := Options{DefaultBucket: "app", LeftDelim: "[[", RightDelim: "]]"}
	text := "{{ .Values.name }} {{- if x }}\n[[ key \"app.name\" ]] [[- /* c */ -]] {{ \"x\" }}\n" +
		"[[ range keys \"app.db.>\" ]]{{ [[ .Key ]] }}={{ [[ .Value ]] }}\n[[ end ]]"
	tmpl, err := Parse("helm", text, o)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	res, err := tmpl.Render(context.Background(), fixture())
	if err != nil {
		t.Fatalf("Render: %v", err)
	}
	want := "{{ .Values.name }} {{- if x }}\nshop{{ \"x\" }}\n{{ app.db.host }}={{ db.internal }}\n{{ app.db.port }}={{ 5432 }}\n"
	if got := string(res.Output); got != want {
		t.Fatalf("Output=\n%s\nwant\n%s", got, want)
	}
	if len(tmpl.ranges) != 1 {
		t.Fatalf("the range over keys did not take the printing-range path: %d ranges", len(tmpl.ranges))
	}
	bothWays(t, text, o, fixed(context.Background(), fixture()))

	// Errors and checks see the delimiters too.
	if _, err := Parse("t", "[[ nosuch ]] {{ nosuch2 }}", Options{LeftDelim: "[[", RightDelim: "]]"}); err == nil ||
		!strings.Contains(err.Error(), `"nosuch" not defined`) || strings.Contains(err.Error(), "nosuch2") {
		t.Fatalf("Parse error %v, want nosuch only", err)
	}
	if _, err := Parse("t", "[[ key \"a b\" ]]", Options{DefaultBucket: "app", LeftDelim: "[[", RightDelim: "]]"}); err == nil {
		t.Fatal("a bad key literal inside [[ ]] parsed")
	}
	if _, err := Parse("t", "[[ if true ]]", Options{LeftDelim: "[[", RightDelim: "]]"}); err == nil || !strings.Contains(err.Error(), "t:1: unexpected EOF") {
		t.Fatalf("Parse error %v, want unexpected EOF at t:1", err)
	}
	// One delimiter alone: the other stays the default.
	res2, err := mustParseOpts(t, `<% key "app.name" %>}}`, Options{DefaultBucket: "app", LeftDelim: "<%", RightDelim: "%>"}).Render(context.Background(), fixture())
	if err != nil || string(res2.Output) != "shop}}" {
		t.Fatalf("Render=%q, %v", res2.Output, err)
	}
	res3, err := mustParseOpts(t, `(( key "app.name" }}`, Options{DefaultBucket: "app", LeftDelim: "(("}).Render(context.Background(), fixture())
	if err != nil || string(res3.Output) != "shop" {
		t.Fatalf("left delimiter only: Render=%q, %v", res3.Output, err)
	}
}

func mustParseOpts(tb testing.TB, text string, o Options) *Template {
	tb.Helper()
	tmpl, err := Parse("t", text, o)
	if err != nil {
		tb.Fatalf("Parse(%q): %v", text, err)
	}
	return tmpl
}

// FuzzParseDelims: any text with any delimiters parses or fails with a
// *ParseError, never panics; what parses renders the same with and without
// printing ranges.
func FuzzParseDelims(f *testing.F) {
	f.Add(`[[ range keys "app.db.>" ]]{{ [[ .Key ]] }}[[ end ]]`, "[[", "]]")
	f.Add(`<% key "app.name" %> {{ x }} <% nosuch %>`, "<%", "%>")
	f.Add(`{{ if }}`, "", "")
	f.Add(`(( env "X" ))`, "((", "))")
	f.Add(`--x--`, "-", "-")
	f.Fuzz(func(t *testing.T, text, left, right string) {
		for _, slow := range []string{"template", "block", "until", "seq", "repeat", "getHost", "range", "IP", "sockaddr"} {
			if strings.Contains(text, slow) && !strings.Contains(text, `keys "app.db.>"`) {
				t.Skip()
			}
		}
		o := Options{DefaultBucket: "app", LeftDelim: left, RightDelim: right, Denylist: []string{"env"}, MaxOutput: 1 << 16}
		_, err := Parse("t", text, o)
		var pe *ParseError
		if err != nil && !errors.As(err, &pe) {
			t.Fatalf("Parse error %T is not a *ParseError: %v", err, err)
		}
		if err == nil && strings.Count(text, "range") <= 1 {
			bothWays(t, text, o, fixed(context.Background(), fixture()))
		}
	})
}
