package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/agent"
	"github.com/kvsync/kvsync/agent/natsconn"
	"github.com/kvsync/kvsync/internal/kvkey"
)

// KVCommand reads and writes the keys of a bucket:
// kvsync kv put|get|create|update|del|purge|keys|history|watch|revert BUCKET [KEY] [VALUE|-].
type KVCommand struct{ io ioStreams }

const kvUsage = `Usage:
  kvsync kv put     BUCKET KEY VALUE|- [--wait D]  set KEY; print the new revision; with
                                                   --wait, then wait up to D for every live
                                                   agent that projects KEY to apply it
                                                   (kvsync fleet wait; status bucket kvsync_status)
  kvsync kv get     BUCKET KEY [--revision N] [--json]
                                                   print the value (raw bytes)
  kvsync kv create  BUCKET KEY VALUE|-             set KEY only if it has no value
  kvsync kv update  BUCKET KEY VALUE|- --revision N
                                                   set KEY only if its revision is N
  kvsync kv del     BUCKET KEY [--revision N]      delete KEY (history kept)
  kvsync kv purge   BUCKET KEY [--revision N]      delete KEY and its history
  kvsync kv purge   BUCKET --all                   purge every key (projections empty)
  kvsync kv keys    BUCKET [FILTER...] [--json]    list keys, sorted
  kvsync kv history BUCKET KEY [--json]            list the revisions of KEY
  kvsync kv watch   BUCKET [FILTER...] [--json]    print changes until interrupted
  kvsync kv revert  BUCKET KEY --to REV            put the value of revision REV again,
                                                   guarded by the current revision

A VALUE of - reads stdin. A value that starts with - goes after --.
FILTERs are NATS wildcards: * is one token, a final > one or more.

Flags:
`

// kvSub describes one kv subcommand.
type kvSub struct {
	usage    string   // argument synopsis
	min, max int      // positional arguments after the subcommand; max -1: any
	flags    []string // flags it takes, beyond the connection flags
	key      bool     // the second positional is a key
	value    bool     // the third positional is a value
	filters  bool     // the positionals after the bucket are filters
	run      func(c *KVCommand, ctx context.Context, kv jetstream.KeyValue, a *kvArgs) error
}

// kvSubcommands returns the kv subcommands by name.
func kvSubcommands() map[string]kvSub {
	return map[string]kvSub{
		"put":     {usage: "BUCKET KEY VALUE|- [--wait D]", min: 3, max: 3, flags: []string{"wait"}, key: true, value: true, run: (*KVCommand).put},
		"get":     {usage: "BUCKET KEY [--revision N] [--json]", min: 2, max: 2, flags: []string{"revision", "json"}, key: true, run: (*KVCommand).get},
		"create":  {usage: "BUCKET KEY VALUE|-", min: 3, max: 3, key: true, value: true, run: (*KVCommand).create},
		"update":  {usage: "BUCKET KEY VALUE|- --revision N", min: 3, max: 3, flags: []string{"revision"}, key: true, value: true, run: (*KVCommand).update},
		"del":     {usage: "BUCKET KEY [--revision N]", min: 2, max: 2, flags: []string{"revision"}, key: true, run: (*KVCommand).del},
		"purge":   {usage: "BUCKET KEY [--revision N] | BUCKET --all", min: 1, max: 2, flags: []string{"revision", "all"}, key: true, run: (*KVCommand).del},
		"keys":    {usage: "BUCKET [FILTER...] [--json]", min: 1, max: -1, flags: []string{"json"}, filters: true, run: (*KVCommand).keys},
		"history": {usage: "BUCKET KEY [--json]", min: 2, max: 2, flags: []string{"json"}, key: true, run: (*KVCommand).history},
		"watch":   {usage: "BUCKET [FILTER...] [--json]", min: 1, max: -1, flags: []string{"json"}, filters: true, run: (*KVCommand).watch},
		"revert":  {usage: "BUCKET KEY --to REV", min: 2, max: 2, flags: []string{"to"}, key: true, run: (*KVCommand).revert},
	}
}

// kvArgs is a parsed kv command line.
type kvArgs struct {
	sub      string
	bucket   string
	key      string
	value    []byte
	filters  []string
	revision uint64
	revSet   bool
	to       uint64
	json     bool
	all      bool // purge: every key
	timeout  time.Duration
	wait     time.Duration // put: wait this long for the fleet to apply it
	putRev   uint64        // put: the revision written
}

// Run implements command.
func (c *KVCommand) Run(ctx context.Context, args []string) error {
	fs := newFlagSet("kv", c.io.err)
	fs.Usage = func() {
		fmt.Fprint(c.io.err, kvUsage)
		fs.PrintDefaults()
	}
	var conn connFlags
	conn.register(fs)
	var a kvArgs
	fs.Uint64Var(&a.revision, "revision", 0, "get: that revision; update: the expected current revision; del/purge: only if the current revision is N")
	fs.Uint64Var(&a.to, "to", 0, "revert: the revision whose value to restore")
	fs.BoolVar(&a.json, "json", false, "JSON output")
	fs.BoolVar(&a.all, "all", false, "purge: every key of the bucket, each with a purge marker that watchers see")
	fs.DurationVar(&a.timeout, "timeout", defaultTimeout, "time allowed to connect and for each request")
	fs.DurationVar(&a.wait, "wait", 0, "put: then wait up to this long until every live agent that projects the key has applied it")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return usagef("missing subcommand\n%s", strings.TrimSuffix(strings.SplitN(kvUsage, "\n\n", 2)[0], "\n"))
	}
	a.sub, pos = pos[0], pos[1:]
	sub, ok := kvSubcommands()[a.sub]
	if !ok {
		return usagef("unknown subcommand %q; one of put, get, create, update, del, purge, keys, history, watch, revert", a.sub)
	}
	synopsis := "usage: kvsync kv " + a.sub + " " + sub.usage
	if len(pos) < sub.min || sub.max >= 0 && len(pos) > sub.max {
		return usagef("%s takes %s, got %d argument(s)\n%s", a.sub, argsName(sub), len(pos), synopsis)
	}
	var badFlag error
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "revision" {
			a.revSet = true
		}
		// Connection flags and --timeout go with every subcommand.
		if slices.Contains([]string{"revision", "to", "json", "all", "wait"}, f.Name) && !slices.Contains(sub.flags, f.Name) && badFlag == nil {
			badFlag = usagef("%s does not take --%s\n%s", a.sub, f.Name, synopsis)
		}
	})
	if badFlag != nil {
		return badFlag
	}
	switch a.sub {
	case "update":
		if !a.revSet {
			return usagef("update needs --revision N (the revision the value must still have)\n%s", synopsis)
		}
		if a.revision == 0 {
			return usagef("update --revision 0 means \"no value yet\": use create\n%s", synopsis)
		}
	case "revert":
		if a.to == 0 {
			return usagef("revert needs --to REV\n%s", synopsis)
		}
	case "purge":
		if a.all && (len(pos) != 1 || a.revSet) {
			return usagef("purge --all takes the bucket only\n%s", synopsis)
		}
		if !a.all && len(pos) != 2 {
			return usagef("purge takes BUCKET KEY, or BUCKET --all\n%s", synopsis)
		}
	}
	if a.timeout <= 0 {
		return usagef("--timeout must be positive")
	}
	if a.wait < 0 {
		return usagef("--wait must not be negative")
	}

	// Check everything locally before a byte goes out: the server closes the
	// connection of a client that sends a key over ~4000 bytes.
	a.bucket = pos[0]
	if err := kvkey.ValidBucket(a.bucket); err != nil {
		return err
	}
	if sub.key && !a.all {
		a.key = pos[1]
		if err := kvkey.Valid(a.key); err != nil {
			return err
		}
	}
	if sub.filters {
		a.filters = pos[1:]
		for _, f := range a.filters {
			if err := kvkey.ValidFilter(f); err != nil {
				return err
			}
		}
	}
	if sub.value {
		if pos[2] == "-" {
			if a.value, err = io.ReadAll(c.io.in); err != nil {
				return fmt.Errorf("read stdin: %w", err)
			}
		} else {
			a.value = []byte(pos[2])
		}
	}

	// A request the server refuses for lack of permission only times out:
	// the refusal comes on the side, and ends the command at once with it.
	refused := natsconn.NewRefusals()
	ctx, stop := refused.Context(ctx)
	defer stop()
	cctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	nc, js, err := connectCLI(cctx, &conn, refusalOption(refused))
	if err != nil {
		return err
	}
	defer nc.Close()
	kv, err := js.KeyValue(cctx, a.bucket)
	if err != nil {
		return explain(refused, "bucket "+a.bucket, bucketError(a.bucket, err))
	}
	if a.sub == "watch" {
		// The watch lives until interrupted: no request timeout. A refusal
		// ends it as an interrupt would: say why.
		err := sub.run(c, ctx, kv, &a)
		if pe := refused.Err(); err == nil && pe != nil {
			err = fmt.Errorf("%s: %w", a.what(), pe)
		}
		return explain(refused, a.what(), err)
	}
	rctx, rcancel := context.WithTimeout(ctx, a.timeout)
	defer rcancel()
	if err := explain(refused, a.what(), sub.run(c, rctx, kv, &a)); err != nil || a.wait <= 0 {
		return err
	}
	// put --wait: the fleet wait for the revision just written.
	wctx, wcancel := context.WithTimeout(ctx, a.wait)
	defer wcancel()
	return fleetWait(wctx, js, c.io, &fleetArgs{
		bucket: a.bucket, key: a.key, revision: a.putRev, min: 1, timeout: a.wait,
		statusBucket: agent.DefaultReportBucket,
	})
}

func argsName(s kvSub) string {
	switch {
	case s.filters:
		return "BUCKET [FILTER...]"
	case s.value:
		return "BUCKET KEY VALUE"
	default:
		return "BUCKET KEY"
	}
}

// what names the operation in errors: "update app cfg.port".
func (a *kvArgs) what() string {
	if a.key == "" {
		return a.sub + " " + a.bucket
	}
	return a.sub + " " + a.bucket + " " + a.key
}

func (c *KVCommand) put(ctx context.Context, kv jetstream.KeyValue, a *kvArgs) error {
	rev, err := kv.Put(ctx, a.key, a.value)
	if err != nil {
		return fmt.Errorf("%s: %w", a.what(), err)
	}
	a.putRev = rev
	fmt.Fprintln(c.io.out, rev)
	return nil
}

func (c *KVCommand) create(ctx context.Context, kv jetstream.KeyValue, a *kvArgs) error {
	rev, err := kv.Create(ctx, a.key, a.value)
	if errors.Is(err, jetstream.ErrKeyExists) {
		if cur, _, cerr := currentRevision(ctx, kv, a.key); cerr == nil {
			return fmt.Errorf("%s: key exists at revision %d; use update --revision %d", a.what(), cur, cur)
		}
		return fmt.Errorf("%s: key exists; use update", a.what())
	}
	if err != nil {
		return fmt.Errorf("%s: %w", a.what(), err)
	}
	fmt.Fprintln(c.io.out, rev)
	return nil
}

func (c *KVCommand) update(ctx context.Context, kv jetstream.KeyValue, a *kvArgs) error {
	rev, err := kv.Update(ctx, a.key, a.value, a.revision)
	if err != nil {
		return revisionError(ctx, kv, a, a.revision, err)
	}
	fmt.Fprintln(c.io.out, rev)
	return nil
}

// del is both del and purge.
func (c *KVCommand) del(ctx context.Context, kv jetstream.KeyValue, a *kvArgs) error {
	var opts []jetstream.KVDeleteOpt
	if a.revSet {
		opts = append(opts, jetstream.LastRevision(a.revision))
	}
	if a.all {
		return c.purgeAll(ctx, kv)
	}
	var err error
	if a.sub == "purge" {
		// Purging a deleted key is how its history goes away: no existence check.
		err = kv.Purge(ctx, a.key, opts...)
	} else {
		if _, gerr := kv.Get(ctx, a.key); errors.Is(gerr, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("%s: key not found", a.what())
		}
		err = kv.Delete(ctx, a.key, opts...)
	}
	if err != nil {
		return revisionError(ctx, kv, a, a.revision, err)
	}
	return nil
}

func (c *KVCommand) get(ctx context.Context, kv jetstream.KeyValue, a *kvArgs) error {
	var e jetstream.KeyValueEntry
	var err error
	if a.revSet {
		e, err = kv.GetRevision(ctx, a.key, a.revision)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("%s: revision %d not found: not a value of this key, a delete marker, or gone from the history", a.what(), a.revision)
		}
	} else {
		e, err = kv.Get(ctx, a.key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("%s: key not found", a.what())
		}
	}
	if err != nil {
		return fmt.Errorf("%s: %w", a.what(), err)
	}
	if a.json {
		return writeJSON(c.io.out, toEntryJSON(e))
	}
	_, err = c.io.out.Write(e.Value())
	return err
}

func (c *KVCommand) keys(ctx context.Context, kv jetstream.KeyValue, a *kvArgs) error {
	var l jetstream.KeyLister
	var err error
	if len(a.filters) == 0 {
		l, err = kv.ListKeys(ctx)
	} else {
		// The lister's watcher rewrites the filter slice in place.
		l, err = kv.ListKeysFiltered(ctx, slices.Clone(a.filters)...)
	}
	keys := []string{}
	switch {
	case errors.Is(err, jetstream.ErrNoKeysFound):
	case err != nil:
		return fmt.Errorf("%s: %w", a.what(), err)
	default:
		for k := range l.Keys() {
			keys = append(keys, k)
		}
		// The lister closes its channel quietly when ctx ends: a partial
		// listing must not pass for a complete one.
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%s: %w", a.what(), err)
		}
	}
	slices.Sort(keys)
	keys = slices.Compact(keys)
	if a.json {
		return writeJSON(c.io.out, keys)
	}
	for _, k := range keys {
		fmt.Fprintln(c.io.out, k)
	}
	return nil
}

func (c *KVCommand) history(ctx context.Context, kv jetstream.KeyValue, a *kvArgs) error {
	es, err := kv.History(ctx, a.key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("%s: key not found", a.what())
	}
	if err != nil {
		return fmt.Errorf("%s: %w", a.what(), err)
	}
	if a.json {
		out := make([]entryJSON, len(es))
		for i, e := range es {
			out[i] = toEntryJSON(e)
		}
		return writeJSON(c.io.out, out)
	}
	width := 0
	if isTerminal(c.io.out) {
		width = 60
	}
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 4, 2, ' ', 0)
	// The columns of `nats kv history`, as plain text.
	fmt.Fprintln(tw, "KEY\tREVISION\tOP\tCREATED\tLENGTH\tVALUE")
	for _, e := range es {
		v := ""
		if e.Operation() == jetstream.KeyValuePut {
			v = printable(e.Value(), width)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%s\n", e.Key(), e.Revision(), opName(e.Operation()),
			e.Created().UTC().Format(time.RFC3339), len(e.Value()), v)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// A delete marker's empty value column would leave padding behind.
	for line := range strings.Lines(buf.String()) {
		if _, err := fmt.Fprintln(c.io.out, strings.TrimRight(line, " \n")); err != nil {
			return err
		}
	}
	return nil
}

func (c *KVCommand) watch(ctx context.Context, kv jetstream.KeyValue, a *kvArgs) error {
	var w jetstream.KeyWatcher
	var err error
	if len(a.filters) == 0 {
		w, err = kv.WatchAll(ctx)
	} else {
		w, err = kv.WatchFiltered(ctx, slices.Clone(a.filters))
	}
	if err != nil {
		return fmt.Errorf("%s: %w", a.what(), err)
	}
	defer w.Stop()
	enc := json.NewEncoder(c.io.out)
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("%s: the watch ended (connection closed or bucket deleted)", a.what())
			}
			if e == nil { // end of the initial values
				continue
			}
			if a.json {
				if err := enc.Encode(toEntryJSON(e)); err != nil {
					return err
				}
				continue
			}
			line := fmt.Sprintf("%d %s %s", e.Revision(), opName(e.Operation()), e.Key())
			if e.Operation() == jetstream.KeyValuePut {
				line += " " + printable(e.Value(), 0)
			}
			if _, err := fmt.Fprintln(c.io.out, line); err != nil {
				return err
			}
		}
	}
}

func (c *KVCommand) revert(ctx context.Context, kv jetstream.KeyValue, a *kvArgs) error {
	old, err := kv.GetRevision(ctx, a.key, a.to)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("%s: revision %d is not a value of this key (another key's revision, a delete marker, or gone from the history)", a.what(), a.to)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", a.what(), err)
	}
	cur, _, err := currentRevision(ctx, kv, a.key)
	if err != nil {
		return fmt.Errorf("%s: %w", a.what(), err)
	}
	rev, err := kv.Update(ctx, a.key, old.Value(), cur)
	if err != nil {
		return revisionError(ctx, kv, a, cur, err)
	}
	fmt.Fprintln(c.io.out, rev)
	return nil
}

// currentRevision returns the latest revision of key and its operation: the
// value's, or the delete marker's when the key is deleted. A key that never
// had a value has revision 0.
func currentRevision(ctx context.Context, kv jetstream.KeyValue, key string) (uint64, jetstream.KeyValueOp, error) {
	e, err := kv.Get(ctx, key)
	if err == nil {
		return e.Revision(), e.Operation(), nil
	}
	if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, 0, err
	}
	es, err := kv.History(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, jetstream.KeyValuePurge, nil
	}
	if err != nil {
		return 0, 0, err
	}
	last := es[len(es)-1]
	return last.Revision(), last.Operation(), nil
}

// revisionError explains a failed guarded write. A stale revision names the
// current one, so that the caller can look at it and retry.
func revisionError(ctx context.Context, kv jetstream.KeyValue, a *kvArgs, expected uint64, err error) error {
	// On R1 buckets a collision also matches ErrKeyExists; on replicated
	// ones only ErrKeyRevisionMismatch.
	if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) && !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("%s: %w", a.what(), err)
	}
	cur, op, cerr := currentRevision(ctx, kv, a.key)
	switch {
	case cerr != nil:
		return fmt.Errorf("%s: revision %d is stale (current revision unknown: %v)", a.what(), expected, cerr)
	case cur == 0:
		return fmt.Errorf("%s: revision %d is stale: the key has no revision; use create", a.what(), expected)
	case op != jetstream.KeyValuePut:
		return fmt.Errorf("%s: revision %d is stale: the current revision is %d (a %s marker)", a.what(), expected, cur, opName(op))
	}
	return fmt.Errorf("%s: revision %d is stale: the current revision is %d", a.what(), expected, cur)
}

// entryJSON is the JSON form of an entry. Value holds a UTF-8 value as a
// string; any other value is in ValueBase64. Delete markers have neither.
type entryJSON struct {
	Bucket      string    `json:"bucket"`
	Key         string    `json:"key"`
	Value       *string   `json:"value,omitempty"`
	ValueBase64 []byte    `json:"value_base64,omitempty"`
	Revision    uint64    `json:"revision"`
	Created     time.Time `json:"created"`
	Operation   string    `json:"operation"`
}

func toEntryJSON(e jetstream.KeyValueEntry) entryJSON {
	j := entryJSON{
		Bucket:    e.Bucket(),
		Key:       e.Key(),
		Revision:  e.Revision(),
		Created:   e.Created().UTC(),
		Operation: opName(e.Operation()),
	}
	if e.Operation() == jetstream.KeyValuePut {
		if v := e.Value(); utf8.Valid(v) {
			s := string(v)
			j.Value = &s
		} else {
			j.ValueBase64 = v
		}
	}
	return j
}

// opName is the operation as the NATS CLI prints it (PUT, DELETE, PURGE;
// the KV-Operation header on the wire says DEL).
func opName(op jetstream.KeyValueOp) string {
	switch op {
	case jetstream.KeyValuePut:
		return "PUT"
	case jetstream.KeyValueDelete:
		return "DELETE"
	case jetstream.KeyValuePurge:
		return "PURGE"
	}
	return "UNKNOWN"
}

// printable shows a value on one line: as is when it is UTF-8 text without
// control characters, else Go-quoted. width > 0 truncates to that many runes.
func printable(v []byte, width int) string {
	s := string(v)
	if !utf8.Valid(v) || strings.ContainsFunc(s, unicode.IsControl) {
		s = strconv.Quote(s)
	}
	if width > 0 && utf8.RuneCountInString(s) > width {
		r := []rune(s)
		s = string(r[:width-1]) + "…"
	}
	return s
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// purgeAll purges every key of the bucket. Each purge leaves a marker, so
// every watcher, kvsync's agents among them, sees the keys go; a raw stream
// purge would remove them without a trace a watcher can see.
func (c *KVCommand) purgeAll(ctx context.Context, kv jetstream.KeyValue) error {
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		return fmt.Errorf("list keys of %s: %w", kv.Bucket(), err)
	}
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	for _, k := range keys {
		if err := kv.Purge(ctx, k); err != nil {
			return fmt.Errorf("purge %s:%s: %w", kv.Bucket(), k, err)
		}
	}
	fmt.Fprintf(c.io.out, "purged %d keys\n", len(keys))
	return nil
}
