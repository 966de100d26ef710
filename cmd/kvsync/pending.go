package main

import (
	"context"
	"errors"
)

// DiffCommand is being written.
type DiffCommand struct{ io ioStreams }

// Run implements command.
func (c *DiffCommand) Run(context.Context, []string) error { return errors.New("diff: not built yet") }

// BenchCommand is being written.
type BenchCommand struct{ io ioStreams }

// Run implements command.
func (c *BenchCommand) Run(context.Context, []string) error { return errors.New("bench: not built yet") }
