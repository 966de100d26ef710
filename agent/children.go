package agent

import (
	"context"

	"github.com/kvsync/kvsync/agent/process"
)

// What the agent uses of agent/process. The owner drives the exec child and
// runs the actions through these interfaces; how processes are started,
// signalled, stopped and reaped is the process package's.

// execChild is the exec child's loop (a *process.ExecLoop) as the owner
// drives it: the projected environment goes in after the initial sync and
// after every batch that changed it, a {restart: true} action restarts the
// child, and an exit that exec.on_exit does not restart ends the agent with
// the child's code.
type execChild interface {
	Update(env []string)
	Restart(ctx context.Context) error
	Exited() <-chan int
}

// actionRunner is one on_change action (a *process.ActionRunner); its action
// loop calls Run once per batch.
type actionRunner interface {
	Run(ctx context.Context, trigger string) ActionResult
}

// ActionResult is what one run of an action did; shown in /status and logged.
type ActionResult = process.ActionResult

var (
	_ execChild    = (*process.ExecLoop)(nil)
	_ actionRunner = (*process.ActionRunner)(nil)
)
