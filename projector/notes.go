package projector

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// notesName is the file, in a projection folder's state folder, that says why
// some files differ from their keys on purpose (a rolled-back batch).
const notesName = "notes.json"

// WriteNotes records notes (relative path -> why the file holds other bytes
// than its key) in the state folder of the projection folder dir, atomically;
// empty notes remove the record. Tools that compare a folder with its bucket
// read them back with ReadNotes.
func WriteNotes(dir string, notes map[string]string) error {
	p := filepath.Join(dir, stateDir, notesName)
	if len(notes) == 0 {
		return RemoveFile(p, false)
	}
	data, err := json.Marshal(notes)
	if err != nil {
		return fmt.Errorf("encode notes of %s: %w", dir, err)
	}
	if _, err := WriteFile(p, data, FileOptions{Mode: 0o644, UID: -1, GID: -1, Fsync: true}); err != nil {
		return fmt.Errorf("write notes of %s: %w", dir, err)
	}
	return nil
}

// ReadNotes reads the notes WriteNotes recorded for dir; none is no error.
func ReadNotes(dir string) (map[string]string, error) {
	data, err := os.ReadFile(filepath.Join(dir, stateDir, notesName))
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read notes of %s: %w", dir, err)
	}
	notes := map[string]string{}
	if err := json.Unmarshal(data, &notes); err != nil {
		return nil, fmt.Errorf("read notes of %s: %w", dir, err)
	}
	return notes, nil
}
