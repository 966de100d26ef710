package templates

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// TestGolden renders every testdata/*.tmpl against fixture() with default
// bucket "app" and compares the output with the .golden file beside it.
func TestGolden(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join("testdata", "*.tmpl"))
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) == 0 {
		t.Fatal("no testdata/*.tmpl")
	}
	for _, path := range paths {
		name := strings.TrimSuffix(filepath.Base(path), ".tmpl")
		t.Run(name, func(t *testing.T) {
			text, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			tmpl, err := Parse(name, string(text), Options{DefaultBucket: "app"})
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			res, err := tmpl.Render(context.Background(), fixture())
			if err != nil {
				t.Fatalf("Render: %v", err)
			}
			golden := strings.TrimSuffix(path, ".tmpl") + ".golden"
			if *update {
				if err := os.WriteFile(golden, res.Output, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if got := res.Output; !bytes.Equal(got, want) {
				t.Fatalf("output differs from %s:\n--- got\n%s\n--- want\n%s", golden, got, want)
			}
		})
	}
}
