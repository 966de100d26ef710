package templates

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/kvsync/kvsync/internal/kvkey"
)

// mustParse parses text with default bucket "app".
func mustParse(tb testing.TB, text string) *Template {
	tb.Helper()
	tmpl, err := Parse("t", text, Options{DefaultBucket: "app"})
	if err != nil {
		tb.Fatalf("Parse(%q): %v", text, err)
	}
	return tmpl
}

func TestMissingKey(t *testing.T) {
	for _, tt := range []struct {
		name        string
		text        string
		wantMissing []string
		wantKeys    []string
		alsoErr     string // a further error the render stopped on, if any
	}{
		{
			name:        "one",
			text:        `x={{ key "app.nope" }}`,
			wantMissing: []string{"app:app.nope"},
			wantKeys:    []string{"app:app.nope"},
		},
		{
			name:        "all collected in order, once each",
			text:        `{{ key "b" }}{{ key "flags:f" }}{{ key "b" }}{{ key "app.name" }}{{ keyOr "c" "d" }}`,
			wantMissing: []string{"app:b", "flags:f"},
			wantKeys:    []string{"app:app.name", "app:b", "app:c", "flags:f"},
		},
		{
			name:        "then a render error",
			text:        `{{ key "a" }}{{ key "b" | fromJSON }}`,
			wantMissing: []string{"app:a", "app:b"},
			wantKeys:    []string{"app:a", "app:b"},
			alsoErr:     "decode JSON",
		},
		{
			name:        "inside range",
			text:        `{{ range keys "app.db.>" }}{{ key (print .Key ".x") }}{{ end }}`,
			wantMissing: []string{"app:app.db.host.x", "app:app.db.port.x"},
			wantKeys:    []string{"app:app.db.host.x", "app:app.db.port.x"},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			res, err := mustParse(t, tt.text).Render(context.Background(), fixture())
			if !errors.Is(err, ErrMissingKey) {
				t.Fatalf("Render error %v, want ErrMissingKey", err)
			}
			for _, m := range tt.wantMissing {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not name %s", err, m)
				}
			}
			if tt.alsoErr != "" && !strings.Contains(err.Error(), tt.alsoErr) {
				t.Errorf("error %q does not contain %q", err, tt.alsoErr)
			}
			if got, want := res.Missing, tt.wantMissing; !slices.Equal(got, want) {
				t.Errorf("Missing=%q, want %q", got, want)
			}
			if got, want := res.Deps.Keys(), tt.wantKeys; !slices.Equal(got, want) {
				t.Errorf("Deps.Keys()=%q, want %q", got, want)
			}
			if res.Output != nil {
				t.Errorf("Output=%q, want nil on error", res.Output)
			}
		})
	}
}

func TestKeyOrRecordsDep(t *testing.T) {
	tmpl := mustParse(t, `{{ keyOr "app.timeout" "30s" }}`)
	src := fixture()
	res, err := tmpl.Render(context.Background(), src)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(res.Output), "30s"; got != want {
		t.Fatalf("Output=%q, want %q", got, want)
	}
	if !res.Deps.Matches("app", "app.timeout") {
		t.Fatalf("Deps %q do not match the absent key keyOr read", res.Deps.Keys())
	}
	if res.Missing != nil {
		t.Fatalf("Missing=%q, want none", res.Missing)
	}

	src.put("app", "app.timeout", "5s")
	res, err = tmpl.Render(context.Background(), src)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(res.Output), "5s"; got != want {
		t.Fatalf("after put: Output=%q, want %q", got, want)
	}
}

func TestDeps(t *testing.T) {
	text := `{{ key "app.name" }}{{ range keys "app.db.*" }}{{ end }}{{ tree "flags:flags" }}` +
		`{{ exists "other:x" }}{{ revision "app.db" }}{{ history "app.name" }}`
	res, err := mustParse(t, text).Render(context.Background(), fixture())
	if err != nil {
		t.Fatal(err)
	}
	d := res.Deps
	for _, tt := range []struct {
		bucket, key string
		want        bool
	}{
		{"app", "app.name", true},
		{"app", "app.db", true},
		{"app", "app.db.host", true},
		{"app", "app.db.new", true},
		{"app", "app.db.host.x", false},
		{"app", "app.other", false},
		{"app", "app.names", false},
		{"flags", "flags.x", true},
		{"flags", "flags.x.y", true},
		{"flags", "flags", false},
		{"other", "x", true},
		{"other", "y", false},
		{"nope", "app.name", false},
	} {
		if got := d.Matches(tt.bucket, tt.key); got != tt.want {
			t.Errorf("Matches(%q, %q)=%v, want %v", tt.bucket, tt.key, got, tt.want)
		}
	}
	if got, want := d.Buckets(), []string{"app", "flags", "other"}; !slices.Equal(got, want) {
		t.Errorf("Buckets()=%q, want %q", got, want)
	}
	if got, want := d.Keys(), []string{"app:app.db", "app:app.name", "other:x"}; !slices.Equal(got, want) {
		t.Errorf("Keys()=%q, want %q", got, want)
	}
	if got, want := d.Filters(), []string{"app:app.db.*", "flags:flags.>"}; !slices.Equal(got, want) {
		t.Errorf("Filters()=%q, want %q", got, want)
	}
	if d.Empty() {
		t.Errorf("Empty()=true for a render that read keys")
	}

	res, err = mustParse(t, `static {{ upper "text" }}`).Render(context.Background(), fixture())
	if err != nil {
		t.Fatal(err)
	}
	if !res.Deps.Empty() || res.Deps.Matches("app", "app.name") || res.Deps.Buckets() != nil {
		t.Errorf("Deps of a template that reads no key: Empty=%v Buckets=%q", res.Deps.Empty(), res.Deps.Buckets())
	}
}

func TestOutputLimit(t *testing.T) {
	t.Run("gigabytes stop early", func(t *testing.T) {
		// 1 GB of output. Nested ranges, because `until 100000000` alone would
		// allocate an 800 MB slice before the first byte is written.
		tmpl, err := Parse("huge", `{{ range until 100000 }}{{ range until 1000 }}xxxxxxxxxx{{ end }}{{ end }}`, Options{MaxOutput: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		res, err := tmpl.Render(context.Background(), fixture())
		if !errors.Is(err, ErrOutputTooLarge) {
			t.Fatalf("Render error %v, want ErrOutputTooLarge", err)
		}
		if !strings.Contains(err.Error(), "huge") {
			t.Errorf("error %q does not name the template", err)
		}
		if res.Output != nil {
			t.Errorf("Output has %d bytes, want nil", len(res.Output))
		}
	})
	text := `{{ key "app.name" }}-{{ key "app.name" }}` // "shop-shop": 9 bytes
	for _, tt := range []struct {
		max     int64
		wantErr bool
	}{
		{0, false}, {9, false}, {100, false}, {8, true}, {1, true},
	} {
		t.Run(fmt.Sprintf("max %d", tt.max), func(t *testing.T) {
			tmpl, err := Parse("t", text, Options{DefaultBucket: "app", MaxOutput: tt.max})
			if err != nil {
				t.Fatal(err)
			}
			res, err := tmpl.Render(context.Background(), fixture())
			if got := errors.Is(err, ErrOutputTooLarge); got != tt.wantErr {
				t.Fatalf("Render error %v, want ErrOutputTooLarge=%v", err, tt.wantErr)
			}
			if !tt.wantErr {
				if got, want := string(res.Output), "shop-shop"; got != want {
					t.Fatalf("Output=%q, want %q", got, want)
				}
			}
			if !res.Deps.Matches("app", "app.name") {
				t.Fatalf("Deps %q lost", res.Deps.Keys())
			}
		})
	}
}

// TestConcurrentRender renders one Template from many goroutines, each with
// its own Source, and checks no render sees another's Source or dependencies.
func TestConcurrentRender(t *testing.T) {
	tmpl := mustParse(t, `{{ key "app.id" }}{{ range keys "app.k.>" }},{{ .Value }}{{ end }}{{ keyOr (print "app.only" (key "app.id")) "" }}`)
	const workers, renders = 8, 40
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			id := fmt.Sprint(w)
			src := newSource().put("app", "app.id", id).put("app", "app.k.a", id+"a").put("app", "app.k.b", id+"b")
			want := fmt.Sprintf("%s,%sa,%sb", id, id, id)
			for range renders {
				res, err := tmpl.Render(context.Background(), src)
				if err != nil {
					t.Errorf("worker %d: %v", w, err)
					return
				}
				if got := string(res.Output); got != want {
					t.Errorf("worker %d: Output=%q, want %q", w, got, want)
					return
				}
				if got, want := res.Deps.Keys(), []string{"app:app.id", "app:app.only" + id}; !slices.Equal(got, want) {
					t.Errorf("worker %d: Deps.Keys()=%q, want %q", w, got, want)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestParseErrors(t *testing.T) {
	for _, tt := range []struct {
		name, text string
		opts       Options
		want       []string // substrings of the error
	}{
		{"unclosed action", "line1\nline2\n{{ key \"a\" ", Options{DefaultBucket: "app"}, []string{"unclosed", "unclosed action:3"}},
		{"unknown function", "ok\n{{ nosuch 1 }}", Options{DefaultBucket: "app"}, []string{"unknown function:2", `"nosuch" not defined`}},
		{"bad key literal", "ok\n{{ key \"a b\" }}", Options{DefaultBucket: "app"}, []string{"bad key literal:2", "allowed are"}},
		{"bad filter literal", "{{ range keys \"app.>.x\" }}{{ end }}", Options{DefaultBucket: "app"}, []string{"bad filter literal:1", "'>' must be the last token"}},
		{"bad bucket literal", "{{ if true }}\n\n{{ exists \"a.b:x\" }}{{ end }}", Options{DefaultBucket: "app"}, []string{"bad bucket literal:3", "bucket name"}},
		{"no default bucket", "{{ keyOr \"x\" \"d\" }}", Options{}, []string{"no default bucket"}},
		{"bad tree prefix", "{{ with tree \"app.*\" }}{{ end }}", Options{DefaultBucket: "app"}, []string{"bad tree prefix:1", "tree"}},
		{"bad literal in define", "{{ define \"sub\" }}\n{{ history \"..\" }}{{ end }}", Options{DefaultBucket: "app"}, []string{"bad literal in define:2", "history"}},
		{"bad default bucket", "x", Options{DefaultBucket: "a.b"}, []string{"default bucket"}},
		{"negative max output", "x", Options{MaxOutput: -1}, []string{"negative"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.name, tt.text, tt.opts)
			if err == nil {
				t.Fatal("Parse succeeded, want error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestParseAcceptsValidLiterals(t *testing.T) {
	text := `{{ keyOr "app.x" "" }}{{ keys "flags:flags.*" }}{{ tree "" }}{{ tree "other:" }}{{ exists "other:a/b=c" }}` +
		`{{ keys (dict "a" 1) }}{{ "app.x" | exists }}`
	if _, err := Parse("ok", text, Options{DefaultBucket: "app"}); err != nil {
		t.Fatalf("Parse: %v", err)
	}
}

// TestInvalidRefs passes refs that only exist at render time, so Parse cannot
// catch them.
func TestInvalidRefs(t *testing.T) {
	for _, tt := range []struct {
		name, text, def, want string
	}{
		{"bad key byte", `{{ key (print "a" " b") }}`, "app", "allowed are"},
		{"empty key", `{{ exists (print "") }}`, "app", "key is empty"},
		{"bad bucket", `{{ revision (print "a.b" ":x") }}`, "app", "bucket name"},
		{"empty bucket", `{{ keyOr (print ":x") "d" }}`, "app", "bucket name is empty"},
		{"no bucket", `{{ key (print "x") }}`, "", "no default bucket"},
		{"bad filter", `{{ keys (print "app.>" ".x") }}`, "app", "'>' must be the last token"},
		{"wildcard in key", `{{ history (print "app.*") }}`, "app", "allowed are"},
		{"wildcard in tree", `{{ tree (print "app.>") }}`, "app", "allowed are"},
		{"colon in key", `{{ key (print "a:b:c") }}`, "app", "allowed are"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tmpl, err := Parse(tt.name, tt.text, Options{DefaultBucket: tt.def})
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			_, err = tmpl.Render(context.Background(), fixture())
			if !errors.Is(err, kvkey.ErrInvalid) {
				t.Fatalf("Render error %v, want kvkey.ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), tt.name+":1") {
				t.Fatalf("error %q does not contain %q and the template line", err, tt.want)
			}
		})
	}
}

func TestDecodeErrorsNameTemplateAndLine(t *testing.T) {
	for _, tt := range []struct {
		name, text, want string
	}{
		{"json", "ok\n{{ key \"app.motd\" | fromJSON }}", "decode JSON"},
		{"json trailing", "{{ `{} {}` | fromJSON }}", "data after the first value"},
		{"yaml", "a\nb\n{{ fromYAML \"a: [\" }}", "decode YAML"},
		{"missing map field", "{{ $m := fromJSON `{\"a\":1}` }}\n{{ $m.b }}", "map has no entry for key"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tmpl := mustParse(t, tt.text)
			_, err := tmpl.Render(context.Background(), fixture())
			if err == nil {
				t.Fatal("Render succeeded, want error")
			}
			line := strings.Count(tt.text, "\n") + 1
			if loc := fmt.Sprintf("t:%d", line); !strings.Contains(err.Error(), loc) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not contain %q and %q", err, loc, tt.want)
			}
		})
	}
}

func TestContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, text := range []string{`{{ keys "app.>" }}`, `{{ tree "app" }}`, `{{ history "app.name" }}`} {
		t.Run(text, func(t *testing.T) {
			res, err := mustParse(t, text).Render(ctx, fixture())
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Render error %v, want context.Canceled", err)
			}
			if res.Deps.Empty() {
				t.Fatalf("Deps empty after a canceled render")
			}
		})
	}
}

func TestHistoryError(t *testing.T) {
	src := fixture()
	src.histErr = errors.New("stream unavailable")
	_, err := mustParse(t, `{{ history "app.name" }}`).Render(context.Background(), src)
	if !errors.Is(err, src.histErr) || !strings.Contains(err.Error(), "app:app.name") {
		t.Fatalf("Render error %v, want it to wrap %v and name the key", err, src.histErr)
	}
}

// unorderedSource returns List results in reverse order and with delete
// markers, which a Source should not do; keys must still be sorted and current.
type unorderedSource struct{ *memSource }

func (s unorderedSource) List(bucket, filter string) []Entry {
	es := s.memSource.List(bucket, filter)
	slices.Reverse(es)
	return append(es, Entry{Bucket: bucket, Key: "app.db.zz", Op: OpDel})
}

func TestKeysSortedAndCurrent(t *testing.T) {
	res, err := mustParse(t, `{{ range keys "app.db.>" }}{{ .Key }} {{ end }}`).Render(context.Background(), unorderedSource{fixture()})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(res.Output), "app.db.host app.db.port "; got != want {
		t.Fatalf("Output=%q, want %q", got, want)
	}
}

func TestTreeCollisions(t *testing.T) {
	for _, tt := range []struct {
		name string
		keys []string // each key's value is the key itself
		want string
	}{
		{"leaf then parent", []string{"p.a", "p.a.b"}, `{"a":{"_value":"p.a","b":"p.a.b"}}`},
		{"parent via slash", []string{"p.a", "p.a/b/c"}, `{"a":{"_value":"p.a","b":{"c":"p.a/b/c"}}}`},
		{"first key wins a leaf", []string{"p.a.b", "p.a/b"}, `{"a":{"b":"p.a.b"}}`},
		{"empty segments dropped", []string{"p.a//b", "p.c/"}, `{"a":{"b":"p.a//b"},"c":"p.c/"}`},
		{"only separators", []string{"p./"}, `{"_value":"p./"}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			src := newSource()
			for _, k := range tt.keys {
				src.put("b", k, k)
			}
			tmpl, err := Parse("t", `{{ tree "b:p" | toJSON }}`, Options{})
			if err != nil {
				t.Fatal(err)
			}
			res, err := tmpl.Render(context.Background(), src)
			if err != nil {
				t.Fatal(err)
			}
			if got := string(res.Output); got != tt.want {
				t.Fatalf("tree=%s, want %s", got, tt.want)
			}
		})
	}
}

func TestSprigKeysOnDicts(t *testing.T) {
	for _, tt := range []struct {
		text, want string
		wantErr    bool
	}{
		{`{{ keys (dict "x" 1) | join "," }}`, "x", false},
		{`{{ keys | len }}`, "0", false},
		{`{{ keys 1 }}`, "", true},
	} {
		res, err := mustParse(t, tt.text).Render(context.Background(), fixture())
		if got := err != nil; got != tt.wantErr {
			t.Fatalf("%s: error %v, want error=%v", tt.text, err, tt.wantErr)
		}
		if got := string(res.Output); got != tt.want {
			t.Fatalf("%s: Output=%q, want %q", tt.text, got, tt.want)
		}
	}
}

func TestParsedTemplateIsReusable(t *testing.T) {
	tmpl := mustParse(t, `{{ key "app.name" }}`)
	src := fixture()
	for i := range 3 {
		src.put("app", "app.name", fmt.Sprint("v", i))
		res, err := tmpl.Render(context.Background(), src)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := string(res.Output), fmt.Sprint("v", i); got != want {
			t.Fatalf("render %d: Output=%q, want %q", i, got, want)
		}
	}
	// The parsed root is only ever cloned; its own functions refuse to run.
	if err := tmpl.root.Execute(new(strings.Builder), nil); !errors.Is(err, errNotRendering) {
		t.Fatalf("executing the unbound root: %v, want errNotRendering", err)
	}
}

// TestListsStayDistinct holds more lists at once than a render borrows from
// the pool, appends to them, and renders again: no list may share an array
// with another, nor with one of the earlier render.
func TestListsStayDistinct(t *testing.T) {
	src := newSource()
	var text, want strings.Builder
	const lists = maxBorrowed + 2
	for i := range lists {
		for j := range 3 {
			src.put("app", fmt.Sprintf("app.l%d.k%d", i, j), fmt.Sprintf("v%d%d", i, j))
		}
		fmt.Fprintf(&text, `{{ $l%d := keys "app.l%d.>" }}{{ $x := append $l%d "extra" }}`, i, i, i)
	}
	for i := range lists {
		fmt.Fprintf(&text, `{{ range $l%d }}{{ .Key }}={{ .Value }};{{ end }}`, i)
		for j := range 3 {
			fmt.Fprintf(&want, "app.l%d.k%d=v%d%d;", i, j, i, j)
		}
	}
	tmpl := mustParse(t, text.String())
	for range 3 {
		res, err := tmpl.Render(context.Background(), src)
		if err != nil {
			t.Fatal(err)
		}
		if got := string(res.Output); got != want.String() {
			t.Fatalf("Output=%q, want %q", got, want.String())
		}
	}
}
