//go:build tools

// Package tools pins the upstream Go programs that scripts/install-pulumi
// builds, so that go.mod and go.sum record every module they need.
package tools

import (
	_ "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"
)
