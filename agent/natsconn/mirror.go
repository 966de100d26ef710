package natsconn

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// MirrorStatus describes a bucket that is a mirror of a bucket elsewhere, as
// on a leaf node of an edge site: its origin, and how far behind the origin
// the mirror is as far as the mirror's server knows.
type MirrorStatus struct {
	// Origin is the bucket mirrored.
	Origin string `json:"origin"`
	// Domain is the JetStream domain of the origin ("" when the origin is
	// in the same domain); APIPrefix the origin's API prefix when it is
	// reached through one that is not a domain's.
	Domain    string `json:"domain,omitempty"`
	APIPrefix string `json:"api_prefix,omitempty"`
	// Lag is how many messages the mirror is behind its origin, as of the
	// mirror's last contact with it. While the origin is unreachable it is
	// the last value known, and LastContact grows.
	Lag uint64 `json:"lag"`
	// LastContact is how long ago the mirror last heard from its origin
	// ("" when it never did).
	LastContact string `json:"last_contact,omitempty"`
	// Error is what the mirror's server reports about the mirroring, or why
	// the figures could not be read now (they are then those of AsOf).
	Error string `json:"error,omitempty"`
	// AsOf is when the figures were read from the server.
	AsOf time.Time `json:"as_of"`
}

// MirrorCache reads the mirror state of buckets when asked (an idle agent
// asks nothing: /status does), and keeps the last answer for the times the
// server cannot be asked. A bucket found not to be a mirror is not asked
// about again. The zero value is ready to use.
type MirrorCache struct {
	mu     sync.Mutex
	last   map[string]*MirrorStatus // bucket -> last known state of a mirror
	plain  map[string]bool          // buckets known not to be mirrors
	asking sync.Mutex               // one Lookup asks at a time
}

// mirrorTimeout bounds the stream info requests of one Lookup.
const mirrorTimeout = time.Second

// Lookup returns the mirror state of each bucket of names, in their order:
// nil for a bucket that is not a mirror, or not known to be one. js is nil
// when there is no JetStream handle or no connection: the last known state
// is returned then, as it is when another Lookup is asking the server.
func (c *MirrorCache) Lookup(ctx context.Context, js jetstream.JetStream, names []string) []*MirrorStatus {
	out := make([]*MirrorStatus, len(names))
	if len(names) == 0 {
		return out
	}
	if c.asking.TryLock() {
		defer c.asking.Unlock()
	} else {
		// Another Lookup is asking the server now: this one returns what
		// is known rather than queueing behind it.
		js = nil
	}
	ctx, cancel := context.WithTimeout(ctx, mirrorTimeout)
	defer cancel()
	for i, name := range names {
		c.mu.Lock()
		plain := c.plain[name]
		c.mu.Unlock()
		if plain {
			continue
		}
		var (
			st  jetstream.Stream
			err = errNotAsked
		)
		if js != nil && ctx.Err() == nil {
			st, err = js.Stream(ctx, "KV_"+name)
		}
		c.mu.Lock()
		if c.last == nil {
			c.last, c.plain = map[string]*MirrorStatus{}, map[string]bool{}
		}
		switch {
		case err == nil:
			if m := mirrorStatus(st.CachedInfo()); m != nil {
				c.last[name] = m
				out[i] = m
			} else {
				c.plain[name] = true
			}
		case c.last[name] != nil:
			m := *c.last[name]
			m.Error = "stream info: " + err.Error()
			out[i] = &m
		}
		c.mu.Unlock()
	}
	return out
}

// errNotAsked: the server was not asked (no connection, time is up).
var errNotAsked = errors.New("not asked: no connection, or no time left")

// mirrorStatus is the mirror part of a stream's info; nil when the stream is
// not a mirror.
func mirrorStatus(info *jetstream.StreamInfo) *MirrorStatus {
	src := info.Config.Mirror
	if src == nil {
		return nil
	}
	m := &MirrorStatus{Origin: strings.TrimPrefix(src.Name, "KV_"), AsOf: time.Now()}
	if ext := src.External; ext != nil && ext.APIPrefix != "" {
		// A domain is reached through the prefix $JS.<domain>.API.
		if d, ok := strings.CutPrefix(ext.APIPrefix, "$JS."); ok && strings.HasSuffix(d, ".API") && !strings.Contains(strings.TrimSuffix(d, ".API"), ".") {
			m.Domain = strings.TrimSuffix(d, ".API")
		} else {
			m.APIPrefix = ext.APIPrefix
		}
	}
	if mi := info.Mirror; mi != nil {
		m.Lag = mi.Lag
		if mi.Active >= 0 {
			m.LastContact = mi.Active.Round(time.Millisecond).String()
		}
		if mi.Error != nil {
			m.Error = mi.Error.Error()
		}
	}
	return m
}
