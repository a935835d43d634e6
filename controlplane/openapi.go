// Package controlplane holds the control plane's embedded OpenAPI document;
// the service itself lives in the internal packages and cmd/controlplane.
package controlplane

import _ "embed"

// OpenAPI is the OpenAPI 3 document of the control plane's HTTP API.
//
//go:embed openapi.json
var OpenAPI []byte
