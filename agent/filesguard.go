package agent

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"github.com/kvsync/kvsync/internal/kvkey"
	"github.com/kvsync/kvsync/projector"
)

// A files projection with check: or rollback: runs each batch through guard
// before it is written:
//
//  1. A path whose rolled-back bytes (or removal) come again keeps the
//     bytes it was restored to; any other value clears the mark.
//  2. With check:, the batch is staged in a private folder. With atomic:
//     file each new or changed file is checked on its own ({{.Path}} is the
//     staged file) and a file that fails keeps its last good version while
//     the others go live. With atomic: snapshot the whole resulting set is
//     staged and checked once ({{.Path}} is the staged folder); a failure
//     keeps the whole batch out. Removals are not checked in file mode.
//  3. With rollback:, what each remaining change replaces, as read from disk
//     before the check, is kept for a rollback if the action fails.

// rolledMark is a path whose batch was rolled back.
type rolledMark struct {
	rejected [32]byte // sha256 of the rejected bytes; zero for a rejected removal
	removal  bool
	old      []byte // what the path was restored to
	existed  bool
}

// matches reports whether change c brings back what the mark rejected.
func (k rolledMark) matches(c projector.Change) bool {
	if c.Remove {
		return k.removal
	}
	return !k.removal && sha256.Sum256(c.Data) == k.rejected
}

// guarded reports whether batches go through guard.
func (p *filesProjection) guarded() bool { return p.m.check != nil || p.m.rollback }

// current reads what the path holds on disk now.
func (p *filesProjection) current(rel string) ([]byte, bool, error) {
	data, err := os.ReadFile(filepath.Join(p.cfg.Dir, filepath.FromSlash(rel)))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read %s: %w", rel, err)
	}
	return data, true, nil
}

// guard filters a batch (one change per path) as the comment above says. It
// returns the changes that may go live, what each of them replaces (with
// rollback:), and the check failures, wrapping errCheck.
func (p *filesProjection) guard(changes []projector.Change, b *bucketState) ([]projector.Change, map[string]*fileUndo, error) {
	// (1)
	kept := changes[:0:0]
	for _, c := range changes {
		if k, ok := p.rolled[c.Path]; ok {
			if k.matches(c) {
				continue
			}
			delete(p.rolled, c.Path)
			p.notesDirty = true
		}
		kept = append(kept, c)
	}
	// Only what differs from the disk needs a check or an undo. What the
	// disk holds is read once: with rollback: it is what (3) keeps.
	type onDisk struct {
		data    []byte
		existed bool
		err     error
	}
	var read map[string]onDisk
	if p.m.rollback {
		read = make(map[string]onDisk, len(kept))
	}
	live := kept[:0:0]
	for _, c := range kept {
		cur, existed, err := p.current(c.Path)
		if err == nil && (c.Remove && !existed || !c.Remove && existed && string(cur) == string(c.Data)) {
			continue
		}
		if read != nil {
			read[c.Path] = onDisk{cur, existed, err}
		}
		live = append(live, c)
	}
	// (2)
	var checkErr error
	if p.m.check != nil && len(live) > 0 {
		var err error
		live, err = p.check(live, b)
		if err != nil {
			checkErr = err
		}
	}
	// (3)
	var undo map[string]*fileUndo
	if p.m.rollback {
		undo = make(map[string]*fileUndo, len(live))
		for _, c := range live {
			d := read[c.Path]
			if d.err != nil {
				return nil, nil, d.err
			}
			u := &fileUndo{old: d.data, existed: d.existed}
			if !c.Remove {
				u.sum = sha256.Sum256(c.Data)
			}
			undo[c.Path] = u
		}
	}
	return live, undo, checkErr
}

// check stages and checks the changes; it returns those that passed.
func (p *filesProjection) check(changes []projector.Change, b *bucketState) ([]projector.Change, error) {
	if p.cfg.Atomic == AtomicSnapshot {
		tree, err := projector.StageTree(p.resultSet(b, changes))
		if err != nil {
			return nil, err
		}
		defer p.discard(tree)
		if err := checkStaged(p.o, p.m, tree.Path()); err != nil {
			return nil, fmt.Errorf("%s: keeping the last good snapshot of %d changes: %w", p.cfg.Dir, len(changes), err)
		}
		return changes, nil
	}
	tree, err := projector.StageTree(func(yield func(string, []byte) bool) {
		for _, c := range changes {
			if !c.Remove && !yield(c.Path, c.Data) {
				return
			}
		}
	})
	if err != nil {
		return nil, err
	}
	defer p.discard(tree)
	passed := changes[:0:0]
	var errs []error
	for _, c := range changes {
		if !c.Remove {
			if err := checkStaged(p.o, p.m, tree.File(c.Path)); err != nil {
				errs = append(errs, fmt.Errorf("%s: keeping the last good file: %w", c.Path, err))
				continue
			}
		}
		passed = append(passed, c)
	}
	return passed, errors.Join(errs...)
}

func (p *filesProjection) discard(t *projector.StagedTree) {
	if err := t.Discard(); err != nil {
		p.m.logger.Warn("discard staged files", "err", err)
	}
}

// resultSet is the whole set of files as it would be after changes: every
// file of the projection, a rolled-back path at its restored bytes.
func (p *filesProjection) resultSet(b *bucketState, changes []projector.Change) func(func(string, []byte) bool) {
	return func(yield func(string, []byte) bool) {
		seen := map[string]bool{}
		for _, c := range changes {
			seen[c.Path] = true
			if !c.Remove && !yield(c.Path, c.Data) {
				return
			}
		}
		for k, e := range b.entries {
			if !kvkey.MatchAny(p.cfg.Keys, k) {
				continue
			}
			rel, err := projector.KeyPath(k, p.cfg.StripPrefix, p.layout)
			if err != nil || seen[rel] {
				continue
			}
			data := e.Value
			if mk, ok := p.rolled[rel]; ok && mk.matches(projector.Change{Path: rel, Data: data}) {
				if !mk.existed {
					continue
				}
				data = mk.old
			}
			if !yield(rel, data) {
				return
			}
		}
	}
}

// guardFull is guard for a complete update: it finds the batch (what differs
// between want and the disk, and the owned files want drops), guards it, and
// returns the set to reconcile with, the dropped changes reverted.
func (p *filesProjection) guardFull(want map[string][]byte, b *bucketState) (map[string][]byte, map[string]*fileUndo, error) {
	var changes []projector.Change
	for _, rel := range slices.Sorted(maps.Keys(want)) {
		changes = append(changes, projector.Change{Path: rel, Data: want[rel]})
	}
	for rel := range p.dir.Files() {
		if _, ok := want[rel]; !ok {
			changes = append(changes, projector.Change{Path: rel, Remove: true})
		}
	}
	live, undo, err := p.guard(changes, b)
	if live == nil && err != nil && !errors.Is(err, errCheck) {
		return nil, nil, err
	}
	passed := make(map[string]bool, len(live))
	for _, c := range live {
		passed[c.Path] = true
	}
	for _, c := range changes {
		if passed[c.Path] {
			continue
		}
		// Not going live: the path keeps what it holds now.
		cur, existed, rerr := p.current(c.Path)
		switch {
		case rerr != nil:
			return nil, nil, rerr
		case existed && p.dir.Owns(c.Path):
			want[c.Path] = cur
		default:
			delete(want, c.Path)
		}
	}
	return want, undo, err
}

// rollback puts back what the last batch replaced, through the projection
// folder as any write, and marks the rejected bytes.
func (p *filesProjection) rollback() (bool, error) {
	u := p.undo
	p.undo = nil
	if len(u) == 0 || p.dir == nil {
		return false, nil
	}
	changes := make([]projector.Change, 0, len(u))
	for _, rel := range slices.Sorted(maps.Keys(u)) {
		fu := u[rel]
		if fu.existed {
			changes = append(changes, projector.Change{Path: rel, Data: fu.old})
		} else {
			changes = append(changes, projector.Change{Path: rel, Remove: true})
		}
		p.rolled[rel] = rolledMark{rejected: fu.sum, removal: fu.sum == [32]byte{}, old: fu.old, existed: fu.existed}
		p.notes[rel] = "" // noteRollback says why
	}
	res, err := p.dir.Apply(changes)
	if err == nil {
		err = errors.Join(func() []error {
			var errs []error
			for _, pe := range res.Errors {
				errs = append(errs, pe)
			}
			return errs
		}()...)
	}
	if err != nil {
		return false, fmt.Errorf("restore %s: %w", p.cfg.Dir, err)
	}
	return true, nil
}

// noteRollback records why the rolled-back files differ from the bucket,
// for kvsync diff.
func (p *filesProjection) noteRollback(st *RollbackStatus) {
	for rel, msg := range p.notes {
		if msg == "" {
			p.notes[rel] = fmt.Sprintf("rolled back: action failed at revision %d", st.Revision)
		}
	}
	p.writeNotes()
}

// writeNotes stores the notes of the paths still rolled back.
func (p *filesProjection) writeNotes() {
	for rel := range p.notes {
		if _, ok := p.rolled[rel]; !ok {
			delete(p.notes, rel)
		}
	}
	p.notesDirty = false
	if err := projector.WriteNotes(p.cfg.Dir, p.notes); err != nil {
		p.m.logger.Warn("record rollback notes", "err", err)
	}
}
