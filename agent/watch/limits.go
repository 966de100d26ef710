package watch

import (
	"context"
	"fmt"
	"time"
)

// limitNudgeSpread bounds the random pause of a watcher refused for the
// consumer limit after the stream changed (its limit raised, say): every
// refused agent hears the same advisory, and their attempts are spread over
// this long.
const limitNudgeSpread = 2 * time.Second

// running tells the sink that a consumer runs again, if the server had
// refused the watcher's consumers for the consumer limit.
func (w *watcher) running() {
	if w.limited.CompareAndSwap(true, false) {
		w.out.Push(ConsumerLimit{Bucket: w.bucket})
	}
}

// limitError explains a consumer refused for the stream's consumer limit:
// how many consumers the stream has, its limit, and what an operator changes
// to lift it. It asks the server once for the stream's figures; without an
// answer it explains without them.
func (w *watcher) limitError(ctx context.Context, err error) error {
	have := ""
	ictx, cancel := context.WithTimeout(ctx, apiTimeout(0))
	defer cancel()
	if st, serr := w.js.Stream(ictx, w.stream()); serr == nil {
		info := st.CachedInfo()
		if mc := info.Config.MaxConsumers; mc > 0 {
			have = fmt.Sprintf("stream %s has %d consumers and its max_consumers is %d", w.stream(), info.State.Consumers, mc)
		} else {
			have = fmt.Sprintf("stream %s has %d consumers and no max_consumers of its own, so the server's default applies (1,000 unless jetstream { limits { default_max_consumers } } says otherwise)", w.stream(), info.State.Consumers)
		}
	} else {
		have = fmt.Sprintf("stream %s is at its consumer limit", w.stream())
	}
	return fmt.Errorf("the server refused a consumer for bucket %s: %w (%s); "+
		"raise the bucket's limit with `kvsync bucket add %s --max-consumers N` (or `nats stream edit %s --max-consumers N`), "+
		"or every stream's default in the server config with `jetstream { limits { default_max_consumers: N } }`; "+
		"kvsync retries with backoff and follows the bucket once there is room",
		w.bucket, err, have, w.bucket, w.stream())
}
