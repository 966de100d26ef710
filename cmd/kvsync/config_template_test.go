package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestTemplateLanguageConfig: the template fields load from YAML (a YAML
// anchor shares one denylist), and file_root is relative to the config file.
func TestTemplateLanguageConfig(t *testing.T) {
	path := writeConfig(t, "kvsync.yaml", `
templates:
  - {name: a, bucket: app, text: '[[ key "x" ]]', dest: a.conf, left_delimiter: "[[", right_delimiter: "]]", function_denylist: &deny [env, expandenv]}
  - {name: b, bucket: app, text: '{{ file "f" }}', dest: b.conf, file_root: files, function_denylist: *deny}
`)
	dir := filepath.Dir(path)
	if err := os.Mkdir(filepath.Join(dir, "files"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatalf("loadConfig: %v", err)
	}
	a, b := cfg.Templates[0], cfg.Templates[1]
	if a.LeftDelimiter != "[[" || a.RightDelimiter != "]]" {
		t.Errorf("delimiters %q %q", a.LeftDelimiter, a.RightDelimiter)
	}
	for _, tc := range cfg.Templates {
		if got, want := tc.FunctionDenylist, []string{"env", "expandenv"}; !slices.Equal(got, want) {
			t.Errorf("%s: function_denylist=%q, want %q", tc.Name, got, want)
		}
	}
	if got, want := b.FileRoot, filepath.Join(dir, "files"); got != want {
		t.Errorf("file_root=%q, want %q", got, want)
	}
}
