package templates

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMigratedConsulTemplate renders testdata/migrate/nginx.tmpl, converted
// from the consul-template template nginx.ctmpl beside it as
// docs/MIGRATING.md describes, against two snapshots of a bucket, and
// compares the output byte for byte with the .want files.
func TestMigratedConsulTemplate(t *testing.T) {
	dir := filepath.Join("testdata", "migrate")
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	// The original parses in kvsync as it is: every function it calls has
	// its consul-template name here. Only its keys and its tree need the
	// rewrite (Consul's "/" hierarchy is "." in NATS, tree is a nested map).
	if _, err := Parse("nginx", read("nginx.ctmpl"), Options{DefaultBucket: "config", SourceName: "nginx.ctmpl"}); err != nil {
		t.Fatalf("the consul-template original does not parse: %v", err)
	}
	tmpl, err := Parse("nginx", read("nginx.tmpl"), Options{DefaultBucket: "config", SourceName: "nginx.tmpl"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		want string
		src  *memSource
	}{
		{"nginx.want", newSource().
			put("config", "service.web.upstreams.a", "10.0.0.1:8080").
			put("config", "service.web.upstreams.b", "10.0.0.2:8080").
			put("config", "service.web.upstreams.b/old", "10.0.0.9:8080"). // not one segment below: ls skips it
			put("config", "service.web.max_fails", "").                    // empty: keyOrDefault gives "3"
			put("config", "service.web.port", "8080").
			put("config", "service.web.domain", "shop.example.com").
			put("config", "service.web.maintenance", "false").
			put("config", "service.web.headers.X-Frame-Options", "DENY").
			put("config", "service.web.headers.X-Content-Type-Options", "nosniff").
			put("config", "service.web.features.beta", "true").
			put("config", "service.web.features.dark", "0").
			put("config", "service.web.limits", `{"rps": 100, "burst": 20}`).
			put("other", "service.web.port", "9999")},
		{"nginx-maintenance.want", newSource().
			put("config", "service.web.domain", "shop.example.com").
			put("config", "service.web.maintenance", "true").
			put("config", "service.web.timeout", "5").
			put("config", "service.web.limits", "")},
	} {
		t.Run(tt.want, func(t *testing.T) {
			res, err := tmpl.Render(context.Background(), tt.src)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := string(res.Output), read(tt.want); got != want {
				t.Fatalf("output differs from %s:\n--- got\n%s\n--- want\n%s", tt.want, got, want)
			}
		})
	}
}

// TestMigratingRewrites renders the rewrites docs/MIGRATING.md gives for
// functions whose name or arguments differ, so the page stays true.
func TestMigratingRewrites(t *testing.T) {
	for _, tt := range []struct {
		text, want, wantErr string
	}{
		{`{{ splitList "," "a,b" | len }}`, "2", ""},
		{`{{ has "x" (list "x" "y") }} {{ has "z" (list "x") }}`, "true false", ""},
		{`{{ regexReplaceAll "a(x*)b" "-axxb-" "${1}W" }}`, "-xxW-", ""},
		{`{{ sub 10 3 }} {{ div 10 5 }} {{ mod 10 4 }} {{ mul 2 3 }} {{ min 4 2 }} {{ max 4 2 }}`, "7 2 2 6 2 4", ""},
		{`{{ until 3 }} {{ untilStep 2 5 1 }}`, "[0 1 2] [2 3 4]", ""},
		{`{{ trimAll "$" "$5.00$" }} {{ trimPrefix "a." "a.b" }} {{ trimSuffix ".com" "x.com" }}`, "5.00 b x", ""},
		{`{{ env "KVSYNC_MIGRATING_UNSET" | default "d" }}`, "d", ""},
		{`{{ if not (env "KVSYNC_MIGRATING_UNSET") }}{{ fail "X is not set" }}{{ end }}`, "", "X is not set"},
		{`{{ range $name, $sub := tree "app" }}{{ if kindIs "map" $sub }}{{ $name }},{{ end }}{{ end }}`, "config,db,features,", ""},
		{`{{ range keys "app.db.>" }}{{ trimPrefix "app.db." .Key }},{{ end }}`, "host,port,", ""},
		{`{{ replace "a" "b" "aXa" }} {{ contains "x" "axb" }} {{ join "," (list "a" "b") }} {{ dict "k" 1 | toJSON }}`, `bXb true a,b {"k":1}`, ""},
		{`{{ (index (keys "app.name") 0).Value }}`, "shop", ""},
		{`{{ define "sub" }}[{{ . }}]{{ end }}{{ template "sub" "x" }}`, "[x]", ""},
	} {
		res, err := mustParse(t, tt.text).Render(context.Background(), fixture())
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s: error %v, want %q", tt.text, err, tt.wantErr)
			}
			continue
		}
		if err != nil || string(res.Output) != tt.want {
			t.Errorf("%s = %q, %v; want %q", tt.text, res.Output, err, tt.want)
		}
	}
}
