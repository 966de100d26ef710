package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/kvsync/kvsync/agent"
)

// DiffCommand shows what differs between the projected files and the live
// buckets: files to add, to change, to remove, and foreign files in the way.
// It writes nothing. Exit 0 when everything is in step, 1 when anything
// differs (or could not be compared), 2 on a usage or config error.
type DiffCommand struct{ io ioStreams }

// diffJSON is one entry of `kvsync diff --json`.
type diffJSON struct {
	Projection string `json:"projection"`
	Kind       string `json:"kind"`
	Path       string `json:"path"`
	Bucket     string `json:"bucket,omitempty"`
	Key        string `json:"key,omitempty"`
	Status     string `json:"status"`
	Binary     bool   `json:"binary,omitempty"`
	Diff       string `json:"diff,omitempty"`
	Error      string `json:"error,omitempty"`
	Note       string `json:"note,omitempty"`
}

// Run implements command.
func (c *DiffCommand) Run(ctx context.Context, args []string) error {
	fs := newFlagSet("diff", c.io.err)
	path := configFlag(fs)
	var conn connFlags
	conn.register(fs)
	asJSON := fs.Bool("json", false, "print a JSON object {in_sync, files: [...]} for scripts")
	all := fs.Bool("all", false, "also list the foreign files of projection folders that no key maps to")
	quiet := fs.Bool("q", false, "list the files only, without their content diffs")
	fs.BoolVar(quiet, "quiet", false, "same as -q")
	timeout := fs.Duration("timeout", time.Minute, "give up after this long (connect, list and read every key)")
	fs.Usage = func() {
		fmt.Fprint(c.io.err, "Usage: kvsync diff [-c FILE] [--json] [--all] [-q] [connection flags]\n\n"+
			"Shows what differs between the projected files and the buckets; writes nothing.\n"+
			"Exit 0: in sync; 1: something differs; 2: usage or config error.\n\n")
		fs.PrintDefaults()
	}
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("diff takes no arguments, got %q", pos)
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	nc, js, err := connectConfig(ctx, cfg, &conn)
	if err != nil {
		return err
	}
	defer nc.Close()
	diffs, err := agent.Diff(ctx, cfg, js)
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("no complete answer within %v (see --timeout): %w", *timeout, err)
	}
	if err != nil {
		return err
	}
	differs := 0
	var shown []agent.FileDiff
	for _, d := range diffs {
		if d.Differs() {
			differs++
		}
		if d.Differs() || *all {
			shown = append(shown, d)
		}
	}
	if *asJSON {
		err = writeDiffJSON(c.io.out, shown, differs == 0)
	} else {
		err = writeDiffText(c.io.out, shown, differs, *quiet)
	}
	if err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	if differs > 0 {
		return exitError{exitFailure}
	}
	return nil
}

// writeDiffJSON prints {"in_sync": bool, "files": [...]}.
func writeDiffJSON(w io.Writer, diffs []agent.FileDiff, inSync bool) error {
	files := make([]diffJSON, 0, len(diffs))
	for _, d := range diffs {
		j := diffJSON{
			Projection: d.Projection, Kind: d.Kind, Path: d.Path, Bucket: d.Bucket, Key: d.Key,
			Status: string(d.Status), Binary: d.Binary, Diff: d.Patch, Note: d.Note,
		}
		if d.Err != nil {
			j.Error = d.Err.Error()
		}
		files = append(files, j)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(struct {
		InSync bool       `json:"in_sync"`
		Files  []diffJSON `json:"files"`
	}{inSync, files})
}

// writeDiffText prints one line per file, each followed by its unified diff
// unless quiet, then a summary line:
//
//	changed  /etc/app/conf.d/a.conf  (files app-files, app:a.conf)
//	--- /etc/app/conf.d/a.conf
//	+++ app:a.conf
//	@@ -1 +1 @@
//	-old
//	+new
//	1 file differs
func writeDiffText(w io.Writer, diffs []agent.FileDiff, differs int, quiet bool) error {
	var b strings.Builder
	for _, d := range diffs {
		fmt.Fprintf(&b, "%-8s %s  (%s %s", d.Status, d.Path, d.Kind, d.Projection)
		if d.Key != "" {
			fmt.Fprintf(&b, ", %s:%s", d.Bucket, d.Key)
		}
		b.WriteString(")")
		switch {
		case d.Status == agent.DiffError:
			fmt.Fprintf(&b, ": %v", d.Err)
		case d.Note != "":
			// Why the agent keeps it so: a rolled-back batch.
			b.WriteString(": " + d.Note)
		case d.Status == agent.DiffForeign && d.Key != "":
			b.WriteString(": not written by kvsync, would not be overwritten")
		case d.Status == agent.DiffForeign:
			b.WriteString(": not written by kvsync, no key maps here")
		case d.Status == agent.DiffMissing:
			b.WriteString(": key gone, kvsync would remove the file")
		}
		b.WriteString("\n")
		if quiet {
			continue
		}
		if d.Binary {
			b.WriteString("binary files differ\n")
		}
		b.WriteString(d.Patch)
	}
	b.WriteString(diffSummary(diffs, differs) + "\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// diffSummary is the last line of the text output: "in sync", "2 files
// differ", "1 file differs, 1 error".
func diffSummary(diffs []agent.FileDiff, differs int) string {
	if differs == 0 {
		return "in sync"
	}
	errs := 0
	for _, d := range diffs {
		if d.Status == agent.DiffError {
			errs++
		}
	}
	var parts []string
	switch n := differs - errs; n {
	case 0:
	case 1:
		parts = append(parts, "1 file differs")
	default:
		parts = append(parts, fmt.Sprintf("%d files differ", n))
	}
	switch errs {
	case 0:
	case 1:
		parts = append(parts, "1 error")
	default:
		parts = append(parts, fmt.Sprintf("%d errors", errs))
	}
	return strings.Join(parts, ", ")
}
