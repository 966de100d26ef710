package agent

import (
	"time"

	"github.com/kvsync/kvsync/internal/retry"
)

// newBackoff and equalJitter are the old names of retry.New and
// retry.EqualJitter, still used by push.go and conn.go; they go once those
// call internal/retry directly.
func newBackoff(min, max time.Duration) backoff { return backoff{retry.New(min, max)} }

func equalJitter(d time.Duration, rnd func(n int64) int64) time.Duration {
	return retry.EqualJitter(d, rnd)
}

// backoff is a retry.Backoff under the old method names.
type backoff struct{ b *retry.Backoff }

func (b backoff) next() time.Duration { return b.b.Next() }
func (b backoff) reset()              { b.b.Reset() }
