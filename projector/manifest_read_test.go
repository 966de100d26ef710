package projector

import (
	"crypto/sha256"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestReadManifest(t *testing.T) {
	for _, tc := range []struct {
		name     string
		snapshot bool
	}{
		{"file mode", false},
		{"snapshot mode", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			d, err := Open(Options{Dir: dir, UID: -1, GID: -1, Snapshot: tc.snapshot})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := d.Apply([]Change{{Path: "a", Data: []byte("1")}, {Path: "b/c", Data: []byte("2")}}); err != nil {
				t.Fatal(err)
			}
			if _, err := d.Apply([]Change{{Path: "a", Remove: true}, {Path: "d", Data: []byte("3")}}); err != nil {
				t.Fatal(err)
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			m, err := ReadManifest(dir)
			if err != nil {
				t.Fatalf("ReadManifest: %v", err)
			}
			if got, want := m.Snapshot, tc.snapshot; got != want {
				t.Fatalf("Snapshot=%v, want %v", got, want)
			}
			want := map[string][32]byte{"b/c": sha256.Sum256([]byte("2")), "d": sha256.Sum256([]byte("3"))}
			if got := m.Files; len(got) != len(want) || got["b/c"] != want["b/c"] || got["d"] != want["d"] {
				t.Fatalf("Files=%v, want %v", got, want)
			}
		})
	}
}

func TestReadManifestEdgeCases(t *testing.T) {
	for _, tc := range []struct {
		name    string
		journal *string // nil: no .kvsync folder at all
		files   int
		corrupt bool
	}{
		{name: "no folder"},
		{name: "torn header", journal: manifestText("kvsync-manifest 1 fi")},
		{name: "torn record", journal: manifestText("kvsync-manifest 1 file\n- \"x\"\n+ 00")},
		{name: "bad header", journal: manifestText("something else\n"), corrupt: true},
		{name: "bad record", journal: manifestText("kvsync-manifest 1 file\n? \"x\"\n"), corrupt: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "p")
			if tc.journal != nil {
				if err := os.MkdirAll(filepath.Join(dir, stateDir), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, stateDir, manifestName), []byte(*tc.journal), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			m, err := ReadManifest(dir)
			if got, want := errors.Is(err, ErrCorruptManifest), tc.corrupt; got != want {
				t.Fatalf("ReadManifest err=%v, want corrupt=%v", err, want)
			}
			if err == nil && len(m.Files) != tc.files {
				t.Fatalf("Files=%v, want %d entries", m.Files, tc.files)
			}
			if tc.journal == nil {
				if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
					t.Fatalf("ReadManifest created %s: %v", dir, err)
				}
			}
		})
	}
}

func manifestText(s string) *string { return &s }
