package projector

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/google/renameio/v2"
	"golang.org/x/sys/unix"
)

// ErrCorruptManifest is wrapped by the error Open returns when the manifest
// cannot be read back. kvsync then refuses to run rather than disown its files:
// move the manifest away (or empty the folder) to start over.
var ErrCorruptManifest = errors.New("corrupt manifest")

const (
	stateDir      = ".kvsync"
	manifestName  = "manifest"
	manifestMagic = "kvsync-manifest 1"
)

// manifest is the set of files and folders kvsync owns in one Dir, kept on disk as
// an append-only journal so that a one-key change costs one short append, not a
// rewrite of every entry. Records, one a line, paths in Go quoted-string syntax:
//
//	kvsync-manifest 1 file      header: format version and mode (file|snapshot)
//	+ <sha256 hex> "path"       kvsync wrote path with that content
//	- "path"                    kvsync removed path
//	d "path"                    kvsync created folder path
//	x "path"                    kvsync removed folder path
//
// The journal is compacted (rewritten atomically with only live entries) on Open
// and when it grows past twice the live entries.
type manifest struct {
	state *os.Root // the .kvsync folder
	f     *os.File // journal, opened for appending
	mode  string
	files map[string][32]byte
	dirs  map[string]bool
	lines int // records in the journal, header excluded
	buf   []byte
}

// loadManifest reads the journal in state. A missing journal is an empty
// manifest. A last line without its newline is the tail of an append cut short
// by a crash, and is dropped: kvsync records a write before renaming the file into
// place and a removal after removing the file, so the dropped record's operation
// never became visible (a '+') or is harmless to repeat (a '-'). torn reports it.
func loadManifest(state *os.Root, mode string) (m *manifest, torn bool, err error) {
	m = &manifest{state: state, mode: mode, files: make(map[string][32]byte), dirs: make(map[string]bool)}
	b, err := state.ReadFile(manifestName)
	if errors.Is(err, fs.ErrNotExist) {
		return m, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read manifest: %w", err)
	}
	if i := bytes.LastIndexByte(b, '\n'); i != len(b)-1 {
		b, torn = b[:i+1], true
	}
	lines := strings.Split(string(b), "\n")
	lines = lines[:len(lines)-1] // after the final '\n'
	if len(lines) == 0 {
		if torn {
			return m, true, nil // the header itself was cut short: nothing was recorded
		}
		return nil, false, fmt.Errorf("%w: empty", ErrCorruptManifest)
	}
	var gotMode string
	switch lines[0] {
	case manifestMagic + " file":
		gotMode = "file"
	case manifestMagic + " snapshot":
		gotMode = "snapshot"
	default:
		return nil, false, fmt.Errorf("%w: line 1: header %q, want %q", ErrCorruptManifest, lines[0], manifestMagic+" "+mode)
	}
	if gotMode != mode {
		return nil, false, fmt.Errorf("manifest was written in %s mode, not %s: switching needs an empty folder", gotMode, mode)
	}
	for i, line := range lines[1:] {
		if err := m.replay(line); err != nil {
			return nil, false, fmt.Errorf("%w: line %d: %w", ErrCorruptManifest, i+2, err)
		}
		m.lines++
	}
	return m, torn, nil
}

func (m *manifest) replay(line string) error {
	if len(line) < 3 || line[1] != ' ' {
		return fmt.Errorf("malformed record %q", line)
	}
	op, rest := line[0], line[2:]
	var sum [32]byte
	if op == '+' {
		h, p, ok := strings.Cut(rest, " ")
		if !ok || len(h) != 64 {
			return fmt.Errorf("malformed record %q", line)
		}
		if _, err := hex.Decode(sum[:], []byte(h)); err != nil {
			return fmt.Errorf("record %q: %w", line, err)
		}
		rest = p
	}
	p, err := strconv.Unquote(rest)
	if err != nil {
		return fmt.Errorf("record %q: path: %w", line, err)
	}
	if err := checkPath(p); err != nil {
		return fmt.Errorf("record %q: %w", line, err)
	}
	switch op {
	case '+':
		m.files[p] = sum
	case '-':
		delete(m.files, p)
	case 'd':
		m.dirs[p] = true
	case 'x':
		delete(m.dirs, p)
	default:
		return fmt.Errorf("unknown record %q", line)
	}
	return nil
}

// live is the number of entries a compacted journal holds.
func (m *manifest) live() int { return len(m.files) + len(m.dirs) }

// add, remove, addDir and removeDir record an operation in memory and in the
// pending buffer; flush writes the buffer to the journal.
func (m *manifest) add(p string, sum [32]byte) {
	m.files[p] = sum
	m.buf = append(m.buf, '+', ' ')
	m.buf = hex.AppendEncode(m.buf, sum[:])
	m.buf = append(m.buf, ' ')
	m.buf = strconv.AppendQuote(m.buf, p)
	m.buf = append(m.buf, '\n')
	m.lines++
}

func (m *manifest) remove(p string) { delete(m.files, p); m.record('-', p) }
func (m *manifest) addDir(p string) { m.dirs[p] = true; m.record('d', p) }
func (m *manifest) removeDir(p string) {
	delete(m.dirs, p)
	m.record('x', p)
}

func (m *manifest) record(op byte, p string) {
	m.buf = append(m.buf, op, ' ')
	m.buf = strconv.AppendQuote(m.buf, p)
	m.buf = append(m.buf, '\n')
	m.lines++
}

// flush appends the pending records to the journal, with fdatasync when sync is
// set. On error the journal may hold a prefix of the records; the in-memory
// state already holds all of them, so the caller fails the whole batch.
func (m *manifest) flush(sync bool) error {
	if len(m.buf) == 0 {
		return nil
	}
	_, err := m.f.Write(m.buf)
	m.buf = m.buf[:0]
	if err == nil && sync {
		err = unix.Fdatasync(int(m.f.Fd()))
	}
	if err != nil {
		return fmt.Errorf("append to manifest: %w", err)
	}
	return nil
}

// needsCompaction reports whether the journal grew past twice the live entries
// (with a floor, so small folders are not rewritten on every change).
func (m *manifest) needsCompaction() bool {
	return m.lines > 2*m.live() && m.lines > 256
}

// compact rewrites the journal with only the live entries, atomically (renameio:
// temp file, fsync, rename), fsyncs the state folder, and reopens it for
// appending.
func (m *manifest) compact() error {
	dirs := make([]string, 0, len(m.dirs))
	for p := range m.dirs {
		dirs = append(dirs, p)
	}
	files := make([]string, 0, len(m.files))
	for p := range m.files {
		files = append(files, p)
	}
	slices.Sort(dirs)
	slices.Sort(files)
	b := make([]byte, 0, 32+len(dirs)*32+len(files)*100)
	b = append(b, manifestMagic+" "+m.mode+"\n"...)
	for _, p := range dirs {
		b = append(b, 'd', ' ')
		b = strconv.AppendQuote(b, p)
		b = append(b, '\n')
	}
	for _, p := range files {
		sum := m.files[p]
		b = append(b, '+', ' ')
		b = hex.AppendEncode(b, sum[:])
		b = append(b, ' ')
		b = strconv.AppendQuote(b, p)
		b = append(b, '\n')
	}
	if err := renameio.WriteFile(manifestName, b, 0o644, renameio.WithRoot(m.state)); err != nil {
		return fmt.Errorf("compact manifest: %w", err)
	}
	if err := syncRoot(m.state); err != nil {
		return fmt.Errorf("compact manifest: %w", err)
	}
	if m.f != nil {
		_ = m.f.Close() // replaced by the new file; its data is already durable
	}
	f, err := m.state.OpenFile(manifestName, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		m.f = nil
		return fmt.Errorf("open manifest: %w", err)
	}
	m.f = f
	m.lines = m.live()
	m.buf = m.buf[:0]
	return nil
}

func (m *manifest) close() error {
	if m.f == nil {
		return nil
	}
	err := m.f.Close()
	m.f = nil
	return err
}

// syncRoot fsyncs the folder r was opened on.
func syncRoot(r *os.Root) error {
	f, err := r.Open(".")
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
