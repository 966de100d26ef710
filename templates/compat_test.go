package templates

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
)

// TestConsulNames covers what the golden file cannot: errors, empty values,
// and the dependencies the consul-template names record.
func TestConsulNames(t *testing.T) {
	src := fixture().put("app", "app.empty", "").put("app", "app.big", `{"n": 12345678901234567890}`)
	for _, tt := range []struct {
		name, text string
		want       string // output, when wantErr is empty
		wantErr    string
	}{
		{"keyOrDefault empty value", `{{ keyOrDefault "app.empty" "d" }}`, "d", ""},
		{"keyOr keeps the empty value", `[{{ keyOr "app.empty" "d" }}]`, "[]", ""},
		{"keyOrDefault other bucket", `{{ keyOrDefault "flags:flags.beta" "off" }}`, "on", ""},
		{"ls has no nested keys", `{{ range ls "app" }}{{ .Key }},{{ end }}`, "big,db,empty,motd,name,", ""},
		{"ls keeps the revision", `{{ range ls "app.db" }}{{ .Revision }},{{ end }}`, "3,4,", ""},
		{"ls of nothing", `[{{ range ls "app.nothing" }}x{{ end }}]`, "[]", ""},
		{"ls of other bucket", `{{ range ls "flags:flags" }}{{ .Key }},{{ end }}`, "beta,new-ui,", ""},
		{"safeLs empty", `{{ range safeLs "app.nothing" }}x{{ end }}`, "", "missing key: app:app.nothing.*"},
		{"parseBool bad", `{{ parseBool "yes" }}`, "", `parseBool: strconv.ParseBool: parsing "yes"`},
		{"parseInt bad", `{{ parseInt "0x10" }}`, "", "parseInt"},
		{"parseInt overflow", `{{ parseInt "9223372036854775808" }}`, "", "out of range"},
		{"parseUint negative", `{{ parseUint "-1" }}`, "", "parseUint"},
		{"parseFloat bad", `{{ parseFloat "1,5" }}`, "", "parseFloat"},
		{"parseJSON bad", `{{ parseJSON "{" }}`, "", "decode JSON"},
		{"parseYAML bad", `{{ parseYAML "a: [" }}`, "", "decode YAML"},
		{"toTOML not a table", `{{ list 1 2 | toTOML }}`, "", "a document is a table"},
		{"toTOML big integer", `{{ key "app.big" | parseJSON | toTOML }}`, "", "does not fit a TOML integer"},
		{"toTOML float", `{{ "{\"f\": 1e3, \"g\": 0.5}" | parseJSON | toTOML }}`, "f = 1000.0\ng = 0.5", ""},
		{"base64Decode bad", `{{ base64Decode "!!" }}`, "", "base64Decode: illegal base64 data"},
		{"base64Decode of URL alphabet", `{{ base64Decode "Pz8-Pg==" }}`, "", "base64Decode"},
		{"base64URLDecode bad", `{{ base64URLDecode "Pz8+Pg==" }}`, "", "base64URLDecode"},
		{"base64 round trip", `{{ "\x00\xff binary" | base64URLEncode | base64URLDecode | base64Encode | base64Decode | printf "%q" }}`, `"\x00\xff binary"`, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			res, err := mustParse(t, tt.text).Render(context.Background(), src)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Render error %v, want one containing %q (output %q)", err, tt.wantErr, res.Output)
				}
				if res.Output != nil {
					t.Fatalf("Output=%q on error", res.Output)
				}
				return
			}
			if err != nil {
				t.Fatalf("Render: %v", err)
			}
			if got := string(res.Output); got != tt.want {
				t.Fatalf("Output=%q, want %q", got, tt.want)
			}
		})
	}
}

func TestLsDeps(t *testing.T) {
	res, err := mustParse(t, `{{ ls "app.db" }}{{ safeLs "flags:flags" }}{{ keyOrDefault "x" "" }}{{ keyExists "y" }}`).Render(context.Background(), fixture())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := res.Deps.Filters(), []string{"app:app.db.*", "flags:flags.*"}; !slices.Equal(got, want) {
		t.Errorf("Filters()=%q, want %q", got, want)
	}
	if got, want := res.Deps.Keys(), []string{"app:x", "app:y"}; !slices.Equal(got, want) {
		t.Errorf("Keys()=%q, want %q", got, want)
	}
	if !res.Deps.Matches("app", "app.db.new") || res.Deps.Matches("app", "app.db.a.b") {
		t.Errorf("ls must depend on the keys one token below its prefix, and only on them")
	}

	// safeLs waits like a missing key, and the render fails.
	res, err = mustParse(t, `{{ safeLs "app.none" }}{{ safeLs "app.none" }}`).Render(context.Background(), fixture())
	if !errors.Is(err, ErrMissingKey) {
		t.Fatalf("safeLs of an empty prefix: %v, want ErrMissingKey", err)
	}
	if got, want := res.Missing, []string{"app:app.none.*"}; !slices.Equal(got, want) {
		t.Fatalf("Missing=%q, want %q", got, want)
	}
}

func TestLsLiteralChecked(t *testing.T) {
	for _, text := range []string{`{{ ls "app.>" }}`, `{{ safeLs "a b" }}`, `{{ keyOrDefault "a*" "" }}`, `{{ keyExists "" }}`, `{{ (key "a b").X }}`} {
		if _, err := Parse("t", text, Options{DefaultBucket: "app"}); err == nil {
			t.Errorf("Parse(%s) succeeded, want a bad literal error", text)
		}
	}
}
