package templates

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// fixed makes every render use ctx and src.
func fixed(ctx context.Context, src Source) func() (context.Context, Source) {
	return func() (context.Context, Source) { return ctx, src }
}

// rendered is what a render gave, in a form two renders can be compared by.
type rendered struct {
	out     string
	ok      bool // Output was not nil
	err     string
	keys    []string
	filters []string
	missing []string
}

func renderWith(tmpl *Template, mk func() (context.Context, Source)) rendered {
	res, err := tmpl.Render(mk())
	r := rendered{
		out: string(res.Output), ok: res.Output != nil,
		keys: res.Deps.Keys(), filters: res.Deps.Filters(), missing: res.Missing,
	}
	if err != nil {
		r.err = err.Error()
	}
	return r
}

// bothWays parses text with and without printing ranges, renders both, each
// with a context and Source from mk, and fails unless they agree in
// everything. It returns the result and how many ranges were compiled.
func bothWays(tb testing.TB, text string, o Options, mk func() (context.Context, Source)) (rendered, int) {
	tb.Helper()
	fast, ferr := parseTemplate("t", text, o, true)
	plain, perr := parseTemplate("t", text, o, false)
	if fmt.Sprint(ferr) != fmt.Sprint(perr) {
		tb.Fatalf("%q: Parse errors differ:\n printing: %v\n plain:    %v", text, ferr, perr)
	}
	if ferr != nil {
		return rendered{err: ferr.Error()}, 0
	}
	got, want := renderWith(fast, mk), renderWith(plain, mk)
	if got.out != want.out || got.ok != want.ok || got.err != want.err ||
		!slices.Equal(got.keys, want.keys) || !slices.Equal(got.filters, want.filters) || !slices.Equal(got.missing, want.missing) {
		tb.Fatalf("%q renders differently:\n printing: %+v\n plain:    %+v", text, got, want)
	}
	return got, len(fast.ranges)
}

// TestFastRangeSameAsTemplate: a printing range (fastrange.go) gives exactly
// what text/template gives, for every shape that is compiled and for the
// shapes next to them that are not, with the default delimiters and others
// (where text with {{ }} must come out as it is).
func TestFastRangeSameAsTemplate(t *testing.T) {
	for _, d := range [][2]string{{"{{", "}}"}, {"[[", "]]"}, {"<%", "%>"}} {
		t.Run(d[0]+d[1], func(t *testing.T) { testFastRangeSameAsTemplate(t, d[0], d[1]) })
	}
}

func testFastRangeSameAsTemplate(t *testing.T, left, right string) {
	o := Options{DefaultBucket: "app", LeftDelim: left, RightDelim: right}
	delims := strings.NewReplacer("{{", left, "}}", right)
	verbatim := "" // text that is not an action with these delimiters
	if left != "{{" {
		verbatim = "{{ .Key }}"
	}
	for _, tt := range []struct {
		text     string
		compiled int    // printing ranges Parse makes
		want     string // a substring the output must hold ("" when it fails)
		wantErr  string
	}{
		{text: `{{ range keys "app.db.>" }}{{ .Key }}={{ .Value }}` + "\n" + `{{ end }}`, compiled: 1, want: "app.db.host=db.internal\napp.db.port=5432\n"},
		{text: `{{ range keys "app.db.>" }}{{ .Revision }} {{ .Created }} {{ .Op }};{{ end }}`, compiled: 1, want: " PUT;"},
		{text: `{{ range keys ">" }}{{ .Revision }},{{ end }}`, compiled: 1, want: "13,12,8,9,2,3,4,5,6,7,10,1,11,"},
		{text: `{{ range $r := keys "app.db.>" }}[{{ $r.Key }}|{{ .Value }}]{{ end }}`, compiled: 1, want: "[app.db.host|db.internal]"},
		{text: `{{ range $i, $r := keys "app.db.>" }}{{ $r.Value }},{{ end }}`, compiled: 1, want: "db.internal,5432,"},
		{text: `{{ range keys "app.none.>" }}{{ .Key }}{{ else }}nothing{{ end }}`, compiled: 1, want: "nothing"},
		{text: `{{ range keys "app.db.>" }}{{ .Key }}{{ else }}nothing{{ end }}`, compiled: 1, want: "app.db.host"},
		{text: `{{ range keys "app.db.>" }}{{ else }}nothing{{ end }}!`, compiled: 1, want: "!"},
		{text: `{{ range keys "app.db.>" -}}  {{ .Key }}  {{- end }}`, compiled: 1, want: "app.db.hostapp.db.port"},
		{text: `{{ range keys "flags:flags.>" }}{{ .Key }} {{ end }}`, compiled: 1, want: "flags.beta flags.new-ui flags.ui.theme "},
		{text: `{{ range keys ">" }}{{ .Key }} {{ end }}`, compiled: 1, want: "a/b/c alpha app.config.json"},
		{text: `{{ if true }}{{ with 1 }}{{ range keys "app.db.>" }}{{ .Key }}{{ end }}{{ end }}{{ end }}`, compiled: 1, want: "app.db.host"},
		{text: `{{ define "x" }}{{ range keys "app.db.>" }}{{ .Key }}{{ end }}{{ end }}<{{ template "x" }}>`, compiled: 1, want: "<app.db.hostapp.db.port>"},
		{text: `{{ range keys "app.db.>" }}{{ .Key }}{{ end }}{{ range keys "flags:>" }}{{ .Value }}{{ end }}`, compiled: 2, want: "app.db.port"},
		// Inner ranges qualify inside outer ones that do not.
		{text: `{{ range $k := keys "app.db.>" }}{{ $k.Key }}:{{ range keys "flags:>" }}{{ .Value }}{{ end }};{{ end }}`, compiled: 1, want: "app.db.host:onoffdark;"},
		{text: `{{ range keys "app.db.>" }}{{ key "app.name" }}{{ end }}{{ key "app.missing" }}`, compiled: 0, wantErr: "missing key"},
		{text: `{{ range keys "app.db.>" }}{{ .Key }}{{ end }}{{ key "app.missing" }}`, compiled: 1, wantErr: "missing key"},
		// Shapes that stay with text/template.
		{text: `{{ range keys "app.db.>" }}{{ .Key | upper }}{{ end }}`, compiled: 0, want: "APP.DB.HOST"},
		{text: `{{ range keys "app.db.>" }}{{ printf "%s" .Key }}{{ end }}`, compiled: 0, want: "app.db.host"},
		{text: `{{ range $i, $r := keys "app.db.>" }}{{ $i }}{{ end }}`, compiled: 0, want: "01"},
		{text: `{{ range keys "app.db.>" }}{{ $.Key }}{{ end }}`, compiled: 0, wantErr: "nil"},
		{text: `{{ range keys "app.db.>" }}{{ .Created.Unix }}{{ end }}`, compiled: 0, want: "17"},
		{text: `{{ range keys "app.db.>" }}{{ .Nope }}{{ end }}`, compiled: 0, wantErr: "Nope"},
		{text: `{{ range keys "app.db.>" }}{{ if .Key }}y{{ end }}{{ end }}`, compiled: 0, want: "yy"},
		{text: `{{ range keys "app.db.>" }}{{ break }}{{ end }}x`, compiled: 0, want: "x"},
		{text: `{{ range keys (print "app.db" ".>") }}{{ .Key }}{{ end }}`, compiled: 0, want: "app.db.host"},
		{text: `{{ range keys "app.db.>" "x" }}{{ . }}{{ end }}`, compiled: 0, wantErr: "argument"},
		{text: `{{ $r := 1 }}{{ range $r = keys "app.db.>" }}{{ $r.Key }}{{ end }}{{ $r.Value }}`, compiled: 0, want: "5432"},
		{text: `{{ range $x := keys "app.db.>" }}{{ $y := 1 }}{{ $x.Key }}{{ end }}`, compiled: 0, want: "app.db.host"},
	} {
		t.Run(tt.text, func(t *testing.T) {
			if left == "[[" && strings.ContainsAny(tt.text, "[]") {
				t.Skip("the text's own brackets would run into the delimiters")
			}
			text := verbatim + delims.Replace(tt.text)
			got, n := bothWays(t, text, o, fixed(context.Background(), fixture()))
			if n != tt.compiled {
				t.Errorf("%d printing ranges, want %d", n, tt.compiled)
			}
			if tt.wantErr != "" {
				if !strings.Contains(got.err, tt.wantErr) {
					t.Fatalf("error %q, want it to hold %q", got.err, tt.wantErr)
				}
				return
			}
			if got.err != "" || !strings.Contains(got.out, tt.want) || !strings.HasPrefix(got.out, verbatim) {
				t.Fatalf("output %q, error %q; want output holding %q after %q", got.out, got.err, tt.want, verbatim)
			}
		})
	}
}

// TestFastRangeLimits: the output limit and a cancelled context stop a
// printing range where they stop text/template, with the same error.
func TestFastRangeLimits(t *testing.T) {
	text := `{{ range keys "app.>" }}{{ .Key }}={{ .Value }};{{ end }}tail{{ key "app.k00001" }}{{ key "app.nope" }}`
	src := bigSource(5_000) // ~100 kB: past a context check (every 32 kB)
	for _, max := range []int64{0, 1, 10, 20, 21, 50_000, 99_999, 1 << 20} {
		got, n := bothWays(t, text, Options{DefaultBucket: "app", MaxOutput: max}, fixed(context.Background(), src))
		if n != 1 {
			t.Fatalf("%d printing ranges, want 1", n)
		}
		if max > 0 && max < 1<<20 && !strings.Contains(got.err, ErrOutputTooLarge.Error()) {
			t.Fatalf("max %d: error %q, want output too large", max, got.err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	got, _ := bothWays(t, text, Options{DefaultBucket: "app"}, fixed(ctx, src))
	if !strings.Contains(got.err, context.Canceled.Error()) {
		t.Fatalf("cancelled: error %q", got.err)
	}
	// Cancelled after the list was taken: the context check inside the
	// output stops both at the same byte.
	got, _ = bothWays(t, text, Options{DefaultBucket: "app"}, func() (context.Context, Source) {
		ctx, cancel := context.WithCancel(context.Background())
		return ctx, &cancelAfterList{memSource: src, cancel: cancel}
	})
	if !strings.Contains(got.err, context.Canceled.Error()) {
		t.Fatalf("cancelled mid-render: error %q", got.err)
	}
}

// cancelAfterList cancels the render's context once the list was read.
type cancelAfterList struct {
	*memSource
	cancel context.CancelFunc
}

func (s *cancelAfterList) List(bucket, filter string) []Entry {
	defer s.cancel()
	return s.memSource.List(bucket, filter)
}

// FuzzFastRange: any body of a range over keys renders the same with and
// without printing ranges (or fails to parse the same way).
func FuzzFastRange(f *testing.F) {
	for _, body := range []string{
		`{{ .Key }}={{ .Value }}` + "\n",
		`{{ $r.Key }} {{ .Revision }} {{ .Created }} {{ .Op }}`,
		`{{- .Key -}} , {{ else }}none`,
		`{{ .Key | upper }}{{ .Value }}`,
		`{{ $i }}{{ $r.Value }}`,
		`{{ continue }}`,
		`{{ .Value }}{{ range keys "flags:>" }}{{ .Key }}{{ end }}`,
		`{{ $r.Nope }}`,
		`x{{ .Key }}{{ else }}{{ .Key }}`,
		`{{/* c */}}{{ .Key }}`,
	} {
		for _, decl := range []string{"", "$r := ", "$i, $r := "} {
			f.Add(decl, "app.db.>", body, int64(0))
		}
	}
	f.Add("", "app.nothing.>", `{{ .Key }}{{ else }}e`, int64(0))
	f.Add("", ">", `{{ .Key }}{{ .Value }}`, int64(40))
	f.Add("", ">", `{{ .Revision }},`, int64(0)) // revisions past 9
	f.Fuzz(func(t *testing.T, decl, filter, body string, max int64) {
		// Renders that would run for ever or wait on the network are not
		// what this compares: template recursion, nested ranges (16 keys
		// per level), big counted loops, DNS.
		for _, slow := range []string{"template", "block", "until", "seq", "repeat", "getHost"} {
			if strings.Contains(body, slow) {
				t.Skip()
			}
		}
		if strings.Count(body, "range") > 1 {
			t.Skip()
		}
		max %= 1 << 20
		if max <= 0 {
			max += 1 << 20
		}
		text := fmt.Sprintf(`{{ range %skeys %q }}%s{{ end }}`, decl, filter, body)
		bothWays(t, text, Options{DefaultBucket: "app", MaxOutput: max}, fixed(context.Background(), fixture()))
	})
}
