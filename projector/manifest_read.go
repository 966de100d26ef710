package projector

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Manifest is a read-only copy of the manifest of a projection folder: what
// kvsync owns there, for tools that inspect a folder without opening it.
type Manifest struct {
	// Files maps every path kvsync owns (slash-separated, relative to the
	// folder) to the sha256 of what it wrote there.
	Files map[string][32]byte
	// Snapshot is true when the folder is projected in "snapshot" mode (files
	// are reached through the ..data symlink).
	Snapshot bool
}

// ReadManifest reads the manifest of the projection folder dir without
// changing anything on disk: unlike Open it neither creates the folder, nor
// removes temp files, nor compacts the journal. A folder without a manifest
// (never projected, or missing) yields an empty Manifest and no error. A
// manifest that cannot be read back is an error wrapping ErrCorruptManifest.
func ReadManifest(dir string) (Manifest, error) {
	empty := Manifest{Files: map[string][32]byte{}}
	state, err := os.OpenRoot(filepath.Join(dir, stateDir))
	if errors.Is(err, fs.ErrNotExist) {
		return empty, nil
	}
	if err != nil {
		return Manifest{}, fmt.Errorf("read manifest of %s: %w", dir, err)
	}
	defer state.Close()
	mode, err := manifestMode(state)
	if errors.Is(err, fs.ErrNotExist) {
		return empty, nil
	}
	if err != nil {
		return Manifest{}, fmt.Errorf("read manifest of %s: %w", dir, err)
	}
	m, _, err := loadManifest(state, mode)
	if err != nil {
		return Manifest{}, fmt.Errorf("read manifest of %s: %w", dir, err)
	}
	return Manifest{Files: m.files, Snapshot: mode == "snapshot"}, nil
}

// manifestMode reads the header line of the journal in state and returns its
// mode ("file" or "snapshot").
func manifestMode(state *os.Root) (string, error) {
	f, err := state.Open(manifestName)
	if err != nil {
		return "", err
	}
	defer f.Close()
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil {
		// No complete header line: empty, or cut short by a crash before the
		// first record. loadManifest judges it; the mode does not matter then.
		return "file", nil
	}
	switch line {
	case manifestMagic + " snapshot\n":
		return "snapshot", nil
	case manifestMagic + " file\n":
		return "file", nil
	}
	return "", fmt.Errorf("%w: line 1: header %q", ErrCorruptManifest, line)
}
