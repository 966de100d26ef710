package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// serverProc is a nats-server the bench runs as a child process
// (Options.ServerBin), so that its memory and CPU are its own and the storm
// scenario can stop it and start it again on the same port and store.
//
// It runs two accounts: APP, with JetStream, is the one every client without
// credentials lands in (the bench, its agents); SYS is the system account,
// which the bench joins as the user "sys" to hear the server's advisories
// (the JetStream API queue's "limit reached" one is published there only).
type serverProc struct {
	bin   string
	dir   string // config, store, log
	port  int
	cmd   *exec.Cmd
	done  chan struct{}
	log   *os.File
	sys   *nats.Conn
	drops atomic.Int64 // requests the server said it dropped (advisories heard)
	advs  atomic.Int64 // "limit reached" advisories heard

	mu      sync.Mutex
	started time.Time // when the last start accepted connections
}

// sysPassword is the password of the bench server's system user; the server
// listens on the loopback interface only.
const sysPassword = "kvsync-bench-sys"

// startServerProc writes the server's config under dir and starts it.
func startServerProc(ctx context.Context, bin, dir string) (*serverProc, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("pick a port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close() // only the number was wanted
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("server folder: %w", err)
	}
	conf := fmt.Sprintf(`listen: "127.0.0.1:%d"
server_name: kvsync-bench
jetstream {
  store_dir: %q
}
accounts {
  SYS { users [ { user: sys, password: %q } ] }
  APP { jetstream: enabled, users [ { user: app, password: %q } ] }
}
system_account: SYS
no_auth_user: app
`, port, filepath.Join(dir, "store"), sysPassword, sysPassword+"-app")
	if err := os.WriteFile(filepath.Join(dir, "nats-server.conf"), []byte(conf), 0o600); err != nil {
		return nil, fmt.Errorf("server config: %w", err)
	}
	s := &serverProc{bin: bin, dir: dir, port: port}
	if err := s.start(ctx); err != nil {
		return nil, err
	}
	sys, err := nats.Connect(s.url(), nats.UserInfo("sys", sysPassword), nats.MaxReconnects(-1),
		nats.ReconnectWait(50*time.Millisecond), nats.Name("kvsync-bench-sys"))
	if err != nil {
		s.stop()
		return nil, fmt.Errorf("connect as the system user: %w", err)
	}
	_, err = sys.Subscribe("$JS.EVENT.ADVISORY.API.LIMIT_REACHED", func(m *nats.Msg) {
		var adv struct {
			Dropped int64 `json:"dropped"`
		}
		if json.Unmarshal(m.Data, &adv) == nil {
			s.drops.Add(adv.Dropped)
		}
		s.advs.Add(1)
	})
	if err == nil {
		err = sys.Flush()
	}
	if err != nil {
		sys.Close()
		s.stop()
		return nil, fmt.Errorf("subscribe to the API limit advisory: %w", err)
	}
	s.sys = sys
	return s, nil
}

func (s *serverProc) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", s.port) }

func (s *serverProc) pid() int { return s.cmd.Process.Pid }

// start runs the server and waits until JetStream answers.
func (s *serverProc) start(ctx context.Context) error {
	f, err := os.OpenFile(filepath.Join(s.dir, "nats-server.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("server log: %w", err)
	}
	s.log = f
	s.cmd = exec.Command(s.bin, "-c", filepath.Join(s.dir, "nats-server.conf"))
	s.cmd.Stdout, s.cmd.Stderr = f, f
	if err := s.cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start nats-server: %w", err)
	}
	s.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		_ = cmd.Wait()
		close(done)
	}(s.cmd, s.done)
	// The first moment it accepts connections is what the storm counts from.
	err = poll(ctx, 30*time.Second, 2*time.Millisecond, func() error {
		select {
		case <-s.done:
			return final{fmt.Errorf("nats-server exited (see %s)", f.Name())}
		default:
		}
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", s.port), time.Second)
		if err != nil {
			return err
		}
		_ = c.Close() // a probe
		return nil
	})
	if err != nil {
		s.stop()
		return fmt.Errorf("nats-server: %w", err)
	}
	s.mu.Lock()
	s.started = time.Now()
	s.mu.Unlock()
	err = poll(ctx, 60*time.Second, 10*time.Millisecond, func() error {
		nc, err := nats.Connect(s.url(), nats.Timeout(time.Second), nats.NoReconnect())
		if err != nil {
			return err
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return err
		}
		actx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err = js.AccountInfo(actx)
		return err
	})
	if err != nil {
		s.stop()
		return fmt.Errorf("nats-server JetStream: %w", err)
	}
	return nil
}

// accepting returns when the last start first accepted a connection.
func (s *serverProc) accepting() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.started
}

// stop stops the server (SIGTERM: it closes its clients and its store) and
// waits for it; after 30 s it is killed.
func (s *serverProc) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.done:
	default:
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(30 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.done
		}
	}
	if s.log != nil {
		_ = s.log.Close() // written by the child
	}
}

// close stops the server and the system connection.
func (s *serverProc) close() {
	if s.sys != nil {
		s.sys.Close()
	}
	s.stop()
}

// restart stops the server and starts it again on the same port and store.
func (s *serverProc) restart(ctx context.Context) error {
	s.stop()
	return s.start(ctx)
}

// dropLines counts the server's log lines saying that a JetStream API queue
// hit its limit and requests were dropped. The server logs this at most once
// a second, so the count is of the seconds that dropped requests.
func (s *serverProc) dropLines() int {
	b, err := os.ReadFile(filepath.Join(s.dir, "nats-server.log"))
	if err != nil {
		return 0
	}
	return bytes.Count(b, []byte("limit reached, dropping"))
}

// rss returns the server process's resident memory.
func (s *serverProc) rss() (int64, error) {
	st, err := procStatus(s.pid())
	return st.rss, err
}

// errNoServerProc is the storm's error without a server of its own.
var errNoServerProc = errors.New("needs a nats-server of its own to restart: give its binary (--nats-server PATH)")

// apiStats reads the account's JetStream API counters (requests received and
// those answered with an error since the server started).
func apiStats(ctx context.Context, js jetstream.JetStream) (total, errs uint64, err error) {
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ai, err := js.AccountInfo(actx)
	if err != nil {
		return 0, 0, fmt.Errorf("account info: %w", err)
	}
	return ai.API.Total, ai.API.Errors, nil
}
