// Package wire is the contract between the filter and the control plane
// (docs/wire.md): the outcome codes, the limits, the syntax of every field
// that crosses between them, the validation of every message (usage
// batches, sync pages and their records, registrations, the problem
// bodies the filter answers with), and the encoders and decoders of the
// messages whose format both sides must agree on byte for byte.
//
// Both sides import it: the filter compiled with TinyGo, so the package
// uses no reflection (no encoding/json, no fmt) and reads JSON with gjson.
// The golden files in testdata are read by the tests of both sides, so a
// change to either side's encoder or decoder fails the other's tests.
package wire
