package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/internal/kvkey"
	"github.com/kvsync/kvsync/projector"
	"github.com/kvsync/kvsync/templates"
)

// DiffStatus says how a file on disk differs from what the buckets say it
// should hold.
type DiffStatus string

// The statuses of a FileDiff.
const (
	// DiffAdded: a key (or a rendered template, or an env file) has no file yet.
	DiffAdded DiffStatus = "added"
	// DiffChanged: the file holds other bytes than the key's value (or the
	// rendered template, or the encoded env file).
	DiffChanged DiffStatus = "changed"
	// DiffMissing: kvsync wrote the file (it is in the manifest) but no key
	// maps to it any more; the agent would remove it.
	DiffMissing DiffStatus = "missing"
	// DiffForeign: a file kvsync did not write. With a Key, that key maps to
	// the path and the agent would not overwrite the file; without one, no key
	// maps there and the file is only listed for information.
	DiffForeign DiffStatus = "foreign"
	// DiffError: the projection or the file could not be compared; Err says why.
	DiffError DiffStatus = "error"
)

// Projection kinds of FileDiff.Kind.
const (
	KindFiles    = "files"
	KindTemplate = "template"
	KindEnv      = "env"
)

// FileDiff is one file that differs from the buckets, as found by Diff.
type FileDiff struct {
	Projection string     // the projection's name
	Kind       string     // KindFiles, KindTemplate or KindEnv
	Path       string     // the file on disk (the folder, for an error of a whole files projection)
	Bucket     string     // the bucket the projection reads (a template's default bucket)
	Key        string     // files projections: the key that maps to Path; "" when none does
	Status     DiffStatus // how it differs
	Binary     bool       // one side is not text, so Patch is empty
	Patch      string     // unified diff from the file on disk to what kvsync would write
	Err        error      // why Status is DiffError
	Note       string     // why the file differs on purpose: "rolled back: action failed at revision 7"
}

// Differs reports whether d is a difference between the files and the
// buckets: everything but a foreign file that no key maps to.
func (d FileDiff) Differs() bool {
	return d.Status != DiffForeign || d.Key != ""
}

// Diff compares every files projection, template and env file of cfg with the
// live buckets and returns the files that differ, projection by projection in
// config order, paths sorted within each. It writes nothing: it reads each
// projection folder's manifest without opening the folder (projector.Open
// would remove temp files), reads keys with one listing and one get per key,
// and renders templates like Render. Per-projection problems (a missing
// bucket, an unreadable file, a template that does not render) are returned as
// FileDiffs with Status DiffError. The error is non-nil only when ctx ended,
// since a listing cut short would make keys look deleted.
func Diff(ctx context.Context, cfg *Config, js jetstream.JetStream) ([]FileDiff, error) {
	var out []FileDiff
	for i := range cfg.Files {
		out = append(out, diffFiles(ctx, js, &cfg.Files[i])...)
	}
	if len(cfg.Templates) > 0 {
		rendered, err := Render(ctx, cfg, js, nil)
		if err != nil {
			return nil, err
		}
		for i, r := range rendered {
			if d, ok := diffTemplate(r, cfg.Templates[i].Bucket); ok {
				out = append(out, d)
			}
		}
	}
	for i := range cfg.Env {
		if d, ok := diffEnv(ctx, js, &cfg.Env[i]); ok {
			out = append(out, d)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("diff: %w", err)
	}
	return out, nil
}

// liveEntries lists the keys of bucket matching filters and gets each one.
func liveEntries(ctx context.Context, js jetstream.JetStream, bucket string, filters []string) (map[string]templates.Entry, error) {
	src := &liveSource{ctx: ctx, js: js, kvs: map[string]jetstream.KeyValue{}}
	kv := src.bucket(bucket)
	if kv == nil {
		return nil, src.err
	}
	// ListKeysFiltered hands the filters to WatchFiltered, which rewrites the
	// slice in place.
	lister, err := kv.ListKeysFiltered(ctx, slices.Clone(filters)...)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", bucket, err)
	}
	keys := map[string]bool{}
	for k := range lister.Keys() {
		if kvkey.MatchAny(filters, k) {
			keys[k] = true
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list %s: %w", bucket, err) // the listing may be short
	}
	out := make(map[string]templates.Entry, len(keys))
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		if e, ok := src.Get(bucket, k); ok {
			out[k] = e
		}
	}
	if src.err != nil {
		return nil, src.err
	}
	return out, nil
}

// diffFiles compares one files projection: every key against its file, every
// file of the manifest against the keys, and the other files of the folder.
func diffFiles(ctx context.Context, js jetstream.JetStream, c *FilesConfig) []FileDiff {
	base := FileDiff{Projection: c.Name, Kind: KindFiles, Path: c.Dir, Bucket: c.Bucket}
	fail := func(err error) []FileDiff {
		d := base
		d.Status, d.Err = DiffError, err
		return []FileDiff{d}
	}
	layout := projector.Flat
	if c.Layout == LayoutTree {
		layout = projector.Tree
	}
	snapshot := c.Atomic == AtomicSnapshot
	live, err := liveEntries(ctx, js, c.Bucket, c.Keys)
	if err != nil {
		return fail(err)
	}
	man, err := projector.ReadManifest(c.Dir)
	if err != nil {
		return fail(err)
	}
	if len(man.Files) > 0 && man.Snapshot != snapshot {
		was := AtomicFile
		if man.Snapshot {
			was = AtomicSnapshot
		}
		return fail(fmt.Errorf("%s was projected with atomic: %s, the config says %s: the agent would refuse the folder", c.Dir, was, c.Atomic))
	}
	notes, err := projector.ReadNotes(c.Dir)
	if err != nil {
		return fail(err)
	}
	root, err := os.OpenRoot(c.Dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		root = nil // nothing projected yet: every key is added
	case err != nil:
		return fail(fmt.Errorf("open %s: %w", c.Dir, err))
	default:
		defer root.Close()
	}

	want := map[string]string{} // path -> key
	for k := range live {
		if rel, err := projector.KeyPath(k, c.StripPrefix, layout); err == nil {
			want[rel] = k // a rejected key is not projected by the agent either
		}
	}
	var out []FileDiff
	at := func(rel, key string) FileDiff {
		d := base
		d.Path, d.Key, d.Note = filepath.Join(c.Dir, filepath.FromSlash(rel)), key, notes[rel]
		return d
	}
	for _, rel := range slices.Sorted(maps.Keys(want)) {
		key := want[rel]
		d := at(rel, key)
		value := live[key].Value
		label := c.Bucket + ":" + key
		if root == nil {
			d.Status = DiffAdded
			d.Patch, d.Binary = unifiedDiff("/dev/null", label, nil, value)
			out = append(out, d)
			continue
		}
		_, owned := man.Files[rel]
		foreign, err := foreignAt(root, rel, snapshot, owned)
		if err != nil {
			d.Status, d.Err = DiffError, err
			out = append(out, d)
			continue
		}
		if foreign {
			d.Status = DiffForeign
			out = append(out, d)
			continue
		}
		cur, err := root.ReadFile(rel)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			d.Status = DiffAdded
			d.Patch, d.Binary = unifiedDiff("/dev/null", label, nil, value)
		case err != nil:
			d.Status, d.Err = DiffError, fmt.Errorf("read %s: %w", d.Path, err)
		case bytes.Equal(cur, value):
			continue
		default:
			d.Status = DiffChanged
			d.Patch, d.Binary = unifiedDiff(d.Path, label, cur, value)
		}
		out = append(out, d)
	}
	if root == nil {
		return out
	}
	for _, rel := range slices.Sorted(maps.Keys(man.Files)) {
		if _, ok := want[rel]; ok {
			continue
		}
		key, _ := projector.PathKey(rel, c.StripPrefix, layout)
		d := at(rel, key)
		cur, err := root.ReadFile(rel)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue // already gone: the agent has only its manifest entry to drop
		case err != nil:
			d.Status, d.Err = DiffError, fmt.Errorf("read %s: %w", d.Path, err)
		default:
			d.Status = DiffMissing
			d.Patch, d.Binary = unifiedDiff(d.Path, "/dev/null", cur, nil)
		}
		out = append(out, d)
	}
	others, err := foreignFiles(root, man.Files, want, snapshot)
	if err != nil {
		return append(out, fail(err)...)
	}
	for _, rel := range others {
		d := at(rel, "")
		d.Status = DiffForeign
		out = append(out, d)
	}
	slices.SortStableFunc(out, func(a, b FileDiff) int { return strings.Compare(a.Path, b.Path) })
	return out
}

// foreignAt reports whether the agent would refuse to write rel because
// something it did not write is in the way: in file mode the file itself, or
// a parent that is not a real folder (the agent never writes through a
// symlink); in snapshot mode the top-level entry, unless it is kvsync's link
// into ..data.
func foreignAt(root *os.Root, rel string, snapshot, owned bool) (bool, error) {
	if snapshot {
		top, _, _ := strings.Cut(rel, "/")
		fi, err := root.Lstat(top)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return false, nil
		case err != nil:
			return false, fmt.Errorf("check %s: %w", top, err)
		case fi.Mode()&fs.ModeSymlink == 0:
			return true, nil
		}
		target, err := root.Readlink(top)
		if err != nil {
			return false, fmt.Errorf("check %s: %w", top, err)
		}
		return target != "..data/"+top, nil
	}
	for i := 0; i < len(rel); i++ {
		if rel[i] != '/' {
			continue
		}
		fi, err := root.Lstat(rel[:i])
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return false, nil // nothing below it exists either
		case err != nil:
			return false, fmt.Errorf("check %s: %w", rel[:i], err)
		case !fi.IsDir():
			return true, nil
		}
	}
	if owned {
		return false, nil
	}
	_, err := root.Lstat(rel)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("check %s: %w", rel, err)
	}
	return true, nil
}

// foreignFiles walks the projection folder and returns, sorted, the files that
// kvsync did not write and that no key maps to. It skips kvsync's own state
// and temp files, and in snapshot mode its data folders and links.
func foreignFiles(root *os.Root, owned map[string][32]byte, mapped map[string]string, snapshot bool) ([]string, error) {
	var out []string
	err := fs.WalkDir(root.FS(), ".", func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if p == "." {
				return err
			}
			return nil // an unreadable folder of someone else's: kvsync never wrote there
		}
		if p == "." {
			return nil
		}
		name := e.Name()
		if strings.HasPrefix(name, ".kvsync") {
			// The state folder and temp files; no key can map to such a name.
			if e.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		topLevel := !strings.Contains(p, "/")
		if snapshot && topLevel {
			if strings.HasPrefix(name, "..data") {
				if e.IsDir() {
					return fs.SkipDir
				}
				return nil
			}
			if e.Type()&fs.ModeSymlink != 0 {
				if target, err := root.Readlink(p); err == nil && target == "..data/"+p {
					return nil
				}
			}
		}
		if e.IsDir() {
			return nil
		}
		_, own := owned[p]
		_, key := mapped[p]
		if !own && !key {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("walk projection folder: %w", err)
	}
	return out, nil
}

// diffTemplate compares one rendered template with its dest. ok is false when
// they are the same.
func diffTemplate(r Rendered, bucket string) (d FileDiff, ok bool) {
	d = FileDiff{Projection: r.Name, Kind: KindTemplate, Path: r.Dest, Bucket: bucket}
	if r.Err != nil {
		if len(r.Missing) > 0 {
			d.Status, d.Err = DiffError, fmt.Errorf("render: missing keys %v: %w", r.Missing, r.Err)
		} else {
			d.Status, d.Err = DiffError, fmt.Errorf("render: %w", r.Err)
		}
		return d, true
	}
	return compareFile(d, "template "+r.Name, r.Output, false)
}

// diffEnv compares the dotenv file of one env projection with the live keys.
// An env projection without a file has nothing on disk to compare.
func diffEnv(ctx context.Context, js jetstream.JetStream, c *EnvConfig) (d FileDiff, ok bool) {
	if c.File == "" {
		return FileDiff{}, false
	}
	d = FileDiff{Projection: c.Name, Kind: KindEnv, Path: c.File, Bucket: c.Bucket}
	live, err := liveEntries(ctx, js, c.Bucket, c.Keys)
	if err != nil {
		d.Status, d.Err = DiffError, err
		return d, true
	}
	kv := make(map[string][]byte, len(live))
	for k, e := range live {
		kv[k] = e.Value
	}
	vars, _ := projector.EnvVars(kv, c.StripPrefix, c.Prefix)
	// The agent writes the file on the first change of the variables: with
	// none at all, it never writes one.
	return compareFile(d, "env "+c.Name, projector.EncodeDotenv(vars), len(vars) == 0)
}

// compareFile fills d with how the file at d.Path differs from want. absentOK
// says a missing file is in step (the agent would not write one).
func compareFile(d FileDiff, label string, want []byte, absentOK bool) (FileDiff, bool) {
	cur, err := os.ReadFile(d.Path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if absentOK {
			return d, false
		}
		d.Status = DiffAdded
		d.Patch, d.Binary = unifiedDiff("/dev/null", label, nil, want)
	case err != nil:
		d.Status, d.Err = DiffError, fmt.Errorf("read %s: %w", d.Path, err)
	case bytes.Equal(cur, want):
		return d, false
	default:
		d.Status = DiffChanged
		d.Patch, d.Binary = unifiedDiff(d.Path, label, cur, want)
	}
	return d, true
}

// isText reports whether b reads as text: valid UTF-8 without NUL bytes.
func isText(b []byte) bool {
	return utf8.Valid(b) && bytes.IndexByte(b, 0) < 0
}

// unifiedDiff returns the unified diff (3 lines of context) that turns a into
// b, labelled with aName and bName, or binary when either side is not text.
// The patch is empty when a and b are equal.
func unifiedDiff(aName, bName string, a, b []byte) (patch string, binary bool) {
	if !isText(a) || !isText(b) {
		return "", true
	}
	if bytes.Equal(a, b) {
		return "", false
	}
	edits := diffLines(splitLines(a), splitLines(b))
	var sb strings.Builder
	sb.WriteString("--- " + aName + "\n+++ " + bName + "\n")
	writeHunks(&sb, edits, 3)
	return sb.String(), false
}

// splitLines splits s after every '\n'; the last line may lack it.
func splitLines(s []byte) []string {
	var out []string
	for len(s) > 0 {
		i := bytes.IndexByte(s, '\n')
		if i < 0 {
			out = append(out, string(s))
			break
		}
		out = append(out, string(s[:i+1]))
		s = s[i+1:]
	}
	return out
}

// edit is one line of an edit script: ' ' kept, '-' removed from a, '+' added
// from b.
type edit struct {
	op   byte
	line string
}

// maxEditDistance bounds the work of the line diff: past this many inserted
// and deleted lines, the changed middle is shown as removed then added whole.
// It keeps memory near maxEditDistance² ints.
const maxEditDistance = 1000

// diffLines returns a shortest edit script from a to b (Myers' O(ND)
// algorithm, after trimming the common prefix and suffix).
func diffLines(a, b []string) []edit {
	pre := 0
	for pre < len(a) && pre < len(b) && a[pre] == b[pre] {
		pre++
	}
	suf := 0
	for suf < len(a)-pre && suf < len(b)-pre && a[len(a)-1-suf] == b[len(b)-1-suf] {
		suf++
	}
	out := make([]edit, 0, len(a)+len(b))
	for _, l := range a[:pre] {
		out = append(out, edit{' ', l})
	}
	out = append(out, myers(a[pre:len(a)-suf], b[pre:len(b)-suf])...)
	for _, l := range a[len(a)-suf:] {
		out = append(out, edit{' ', l})
	}
	return out
}

// myers is Myers' greedy shortest-edit-script algorithm on lines. It records
// the frontier of every round and walks it back from the end.
func myers(a, b []string) []edit {
	n, m := len(a), len(b)
	whole := func() []edit {
		out := make([]edit, 0, n+m)
		for _, l := range a {
			out = append(out, edit{'-', l})
		}
		for _, l := range b {
			out = append(out, edit{'+', l})
		}
		return out
	}
	if n == 0 || m == 0 {
		return whole()
	}
	limit := min(n+m, maxEditDistance)
	off := limit + 1
	v := make([]int, 2*limit+3)
	var trace [][]int // trace[d]: v[k] for k in [-d, d] before round d, at index k+d
	found := -1
	for d := 0; d <= limit && found < 0; d++ {
		trace = append(trace, slices.Clone(v[off-d:off+d+1]))
		for k := -d; k <= d; k += 2 {
			var x int
			if k == -d || k != d && v[off+k-1] < v[off+k+1] {
				x = v[off+k+1] // down: an insertion
			} else {
				x = v[off+k-1] + 1 // right: a deletion
			}
			y := x - k
			for x < n && y < m && a[x] == b[y] {
				x, y = x+1, y+1
			}
			v[off+k] = x
			if x >= n && y >= m {
				found = d
				break
			}
		}
	}
	if found < 0 {
		return whole()
	}
	var rev []edit
	x, y := n, m
	for d := found; d > 0; d-- {
		w := trace[d]
		at := func(k int) int { return w[k+d] }
		k := x - y
		var pk int
		if k == -d || k != d && at(k-1) < at(k+1) {
			pk = k + 1
		} else {
			pk = k - 1
		}
		px := at(pk)
		py := px - pk
		for x > px && y > py {
			x, y = x-1, y-1
			rev = append(rev, edit{' ', a[x]})
		}
		if x == px {
			y--
			rev = append(rev, edit{'+', b[y]})
		} else {
			x--
			rev = append(rev, edit{'-', a[x]})
		}
	}
	for x > 0 {
		x--
		rev = append(rev, edit{' ', a[x]})
	}
	slices.Reverse(rev)
	return rev
}

// writeHunks writes the edit script as unified-diff hunks with ctx lines of
// context around each change, merging hunks whose context would touch.
func writeHunks(sb *strings.Builder, edits []edit, ctx int) {
	var changes []int
	for i, e := range edits {
		if e.op != ' ' {
			changes = append(changes, i)
		}
	}
	// aLine[i], bLine[i]: 1-based line numbers of edits[i] in a and b (the
	// next line's number for the side it is not on).
	aLine, bLine := make([]int, len(edits)+1), make([]int, len(edits)+1)
	al, bl := 1, 1
	for i, e := range edits {
		aLine[i], bLine[i] = al, bl
		if e.op != '+' {
			al++
		}
		if e.op != '-' {
			bl++
		}
	}
	aLine[len(edits)], bLine[len(edits)] = al, bl
	for c := 0; c < len(changes); {
		start := max(changes[c]-ctx, 0)
		last := c
		for last+1 < len(changes) && changes[last+1]-changes[last] <= 2*ctx+1 {
			last++
		}
		end := min(changes[last]+ctx+1, len(edits)) // exclusive
		fmt.Fprintf(sb, "@@ -%s +%s @@\n",
			hunkRange(aLine[start], aLine[end]-aLine[start]),
			hunkRange(bLine[start], bLine[end]-bLine[start]))
		for _, e := range edits[start:end] {
			sb.WriteByte(e.op)
			sb.WriteString(e.line)
			if !strings.HasSuffix(e.line, "\n") {
				sb.WriteString("\n\\ No newline at end of file\n")
			}
		}
		c = last + 1
	}
}

// hunkRange formats the start,count of one side of a hunk header the way diff
// -u does: an empty range names the line before it, a one-line range has no
// count.
func hunkRange(start, count int) string {
	switch count {
	case 0:
		return fmt.Sprintf("%d,0", start-1)
	case 1:
		return fmt.Sprintf("%d", start)
	}
	return fmt.Sprintf("%d,%d", start, count)
}
