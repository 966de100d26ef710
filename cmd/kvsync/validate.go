package main

import (
	"context"
	"fmt"
)

// ValidateCommand checks a config and prints every problem. Exit 2 if any.
type ValidateCommand struct{ io ioStreams }

// Run implements command.
func (c *ValidateCommand) Run(ctx context.Context, args []string) error {
	fs := newFlagSet("validate", c.io.err)
	path := configFlag(fs)
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	if _, err := loadConfig(*path); err != nil {
		return err
	}
	fmt.Fprintf(c.io.out, "%s: ok\n", *path)
	return nil
}
