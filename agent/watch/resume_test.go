package watch

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvsync/kvsync/internal/testutil"
)

// apiLog records, in the order the server routed them, the consumer requests
// of one stream and the answers to them, as seen by another client of the
// same account.
type apiLog struct {
	mu      sync.Mutex
	events  []apiEvent
	replies map[string]int // reply subject -> index of its request
}

type apiEvent struct {
	verb     string // CREATE or DELETE
	consumer string
	answered int // index in events of the answer; 0 until there is one
}

func watchAPI(t *testing.T, url, stream string) *apiLog {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	l := &apiLog{replies: map[string]int{}}
	_, err = nc.Subscribe(">", func(m *nats.Msg) {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, verb := range []string{"CREATE", "DELETE"} {
			rest, ok := strings.CutPrefix(m.Subject, "$JS.API.CONSUMER."+verb+"."+stream+".")
			if !ok {
				continue
			}
			name, _, _ := strings.Cut(rest, ".")
			l.events = append(l.events, apiEvent{verb: verb, consumer: name})
			l.replies[m.Reply] = len(l.events) - 1
			return
		}
		if i, ok := l.replies[m.Subject]; ok {
			l.events = append(l.events, apiEvent{verb: "answer"})
			l.events[i].answered = len(l.events) - 1
			delete(l.replies, m.Subject)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return l
}

// TestResumeDeletesAfterTheNewConsumer: when the consumer watcher re-creates
// its consumer (here after reconnects), the consumer it left is deleted only
// once the creation of the new one is answered, never beside it. A fleet that
// resumes at once then has at most one consumer request per agent in the
// server's API queue, which the server drops whole past 10,000 pending
// requests. Every consumer left is deleted in the end.
func TestResumeDeletesAfterTheNewConsumer(t *testing.T) {
	s, js := syncServer(t)
	testutil.CreateBucket(t, js, jetstream.KeyValueConfig{Bucket: "res"})
	wr := newWriter(t, js, "res")
	wr.put("a", []byte("1"))
	wr.flush()
	api := watchAPI(t, s.ClientURL(), "KV_res")

	logs := &testutil.SyncBuffer{}
	v := startViewer(t, js, "res", logs)
	checkView(t, v, wr.m, logs)
	const resumes = 5
	for i := range resumes {
		v.w.Reconnected()
		wr.put("a", fmt.Appendf(nil, "after resume %d", i))
		wr.flush()
		converges(t, v, wr.m, logs)
		// Wait until the watcher has taken the re-created consumer's
		// answer before the next reconnect, so that each resume shows: a
		// reconnect while a creation is on its way gives the creation up,
		// and the consumer left is deleted at once (its creation may never
		// have been sent).
		testutil.CheckFor(t, 10*time.Second, func() error {
			if n := strings.Count(logs.String(), "consumer re-created"); n < i+1 {
				return fmt.Errorf("the watcher re-made its consumer %d times, want %d", n, i+1)
			}
			api.mu.Lock()
			defer api.mu.Unlock()
			n := 0
			for _, e := range api.events {
				if e.verb == "CREATE" && e.answered > 0 {
					n++
				}
			}
			if n < i+2 {
				return fmt.Errorf("%d consumers created, want %d", n, i+2)
			}
			return nil
		})
	}
	st, err := js.Stream(context.Background(), "KV_res")
	if err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 10*time.Second, func() error {
		info, err := st.Info(context.Background())
		if err != nil {
			return err
		}
		if info.State.Consumers != 1 {
			return fmt.Errorf("%d consumers on the stream, want the watcher's one", info.State.Consumers)
		}
		return nil
	})

	api.mu.Lock()
	defer api.mu.Unlock()
	var created []apiEvent // in order
	deleted := map[string]int{}
	for i, e := range api.events {
		switch e.verb {
		case "CREATE":
			created = append(created, e)
		case "DELETE":
			deleted[e.consumer] = i
		}
	}
	if len(created) < resumes+1 {
		t.Fatalf("%d consumers created, want at least %d", len(created), resumes+1)
	}
	for k, c := range created[:len(created)-1] {
		next := created[k+1]
		d, ok := deleted[c.consumer]
		switch {
		case !ok:
			t.Errorf("consumer %d (%s) left but never deleted", k, c.consumer)
		case next.answered == 0 || d < next.answered:
			t.Errorf("consumer %d deleted (event %d) before the creation of the next one was answered (event %d)", k, d, next.answered)
		}
	}
}
