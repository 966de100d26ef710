package agent

import (
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"
)

// heldDir is a pushDir that records the calls push-back makes for held
// edits and conflict copies; any other call panics (nil embedded interface).
type heldDir struct {
	pushDir
	held  map[string][]byte // name -> bytes
	calls []string
}

func (d *heldDir) ReadHeld(name string) ([]byte, error) {
	d.calls = append(d.calls, "read "+name)
	b, ok := d.held[name]
	if !ok {
		return nil, errors.New("no such held edit")
	}
	return b, nil
}

func (d *heldDir) DropHeld(name string, sum [32]byte) (string, error) {
	d.calls = append(d.calls, "drop "+name)
	if sha256.Sum256(d.held[name]) != sum {
		return "conflicts/" + name, nil
	}
	delete(d.held, name)
	return "", nil
}

func (d *heldDir) KeepHeld(name string) (string, error) {
	d.calls = append(d.calls, "keep "+name)
	delete(d.held, name)
	return "conflicts/" + name, nil
}

func (d *heldDir) SaveConflict(rel string, _ []byte) (string, error) {
	d.calls = append(d.calls, "save "+rel)
	return "conflicts/" + rel, nil
}

func newHeldPusher(d *heldDir) *pusher {
	return &pusher{d: d, jobs: newQueue[pushJob](), logger: slog.New(slog.DiscardHandler), kept: map[string]string{}}
}

func heldJob(rel, held string, data string) pushJob {
	return pushJob{op: pushPut, rel: rel, key: rel, data: []byte(data), sum: sha256.Sum256([]byte(data)), rescue: true, held: held}
}

// The sender's requests are answered by the pusher on the owner goroutine,
// into a reply channel with room for the answer: the owner never waits.
func TestHeldRequestsAnsweredByOwner(t *testing.T) {
	d := &heldDir{held: map[string][]byte{"h1": []byte("later bytes"), "h2": []byte("b")}}
	ps := newHeldPusher(d)

	read := make(chan heldBytes, 1)
	ps.handle(heldRead{pushMsg: pushMsg{ps}, held: "h1", reply: read}, nil)
	if r := <-read; !r.ok || string(r.data) != "later bytes" {
		t.Fatalf("heldRead answered %+v", r)
	}

	// A held edit kept as a conflict copy is not read again, and saving it
	// again names the same copy.
	saved := make(chan savedCopy, 1)
	ps.handle(conflictSave{pushMsg: pushMsg{ps}, job: heldJob("a", "h2", "b"), reply: saved}, nil)
	if r := <-saved; r.err != nil || r.name != "conflicts/h2" {
		t.Fatalf("conflictSave answered %+v", r)
	}
	ps.handle(heldRead{pushMsg: pushMsg{ps}, held: "h2", reply: read}, nil)
	if r := <-read; r.ok {
		t.Fatalf("heldRead of a kept edit answered %+v", r)
	}
	ps.handle(conflictSave{pushMsg: pushMsg{ps}, job: heldJob("a", "h2", "b"), reply: saved}, nil)
	if r := <-saved; r.err != nil || r.name != "conflicts/h2" {
		t.Fatalf("second conflictSave answered %+v", r)
	}

	// heldSafe and pushLanded drop a held edit once.
	ps.handle(heldSafe{pushMsg: pushMsg{ps}, job: heldJob("c", "h1", "later bytes")}, nil)
	ps.handle(heldSafe{pushMsg: pushMsg{ps}, job: heldJob("c", "h1", "later bytes")}, nil)
	want := []string{"read h1", "keep h2", "drop h1"}
	if !slices.Equal(d.calls, want) {
		t.Fatalf("calls %q, want %q", d.calls, want)
	}
}

// When push-back stops, the pusher settles what the sender reported last
// (stopped) and then saves the displaced edits still queued (stop).
func TestPusherStopSavesUnsent(t *testing.T) {
	d := &heldDir{held: map[string][]byte{"h1": []byte("x"), "h2": []byte("y")}}
	ps := newHeldPusher(d)
	landed := heldJob("a", "h1", "x")
	// Landed, but the sender stopped before it took the next job.
	ps.jobs.push(landed)
	// Never sent: its held file becomes the copy.
	ps.jobs.push(heldJob("b", "h2", "y"))
	// Still on disk: found again at the next start.
	ps.jobs.push(pushJob{op: pushPut, rel: "c", key: "c", data: []byte("z")})
	// Displaced but not held (holding it failed): saved from memory.
	ps.jobs.push(pushJob{op: pushPut, rel: "d", key: "d", data: []byte("w"), rescue: true})

	ps.stopped(pushDone{pushMsg: pushMsg{ps}, result: pushLanded, job: landed, rev: 3})
	// A request whose sender is gone is moot.
	ps.stopped(heldRead{pushMsg: pushMsg{ps}, held: "h2", reply: make(chan heldBytes, 1)})
	ps.stop()

	want := []string{"drop h1", "save a", "keep h2", "save d"}
	if !slices.Equal(d.calls, want) {
		t.Fatalf("calls %q, want %q", d.calls, want)
	}
	if _, ok := ps.jobs.peek(); ok {
		t.Fatal("jobs left in the queue")
	}
}

// A sender waiting for an answer stops waiting when its context ends, with
// its request left in the inbox.
func TestAskEndsWithContext(t *testing.T) {
	in := newInbox()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := ask(ctx, in, func(reply chan<- heldBytes) ownerEvent {
			return heldRead{held: "h", reply: reply}
		})
		done <- err
	}()
	<-in.ready
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("ask: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ask still waiting after its context ended")
	}
	if got := in.drain(); len(got) != 1 {
		t.Fatalf("inbox holds %d events, want the request", len(got))
	}
}
