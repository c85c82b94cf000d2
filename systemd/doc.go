// Package systemd holds what a Coffer node needs under systemd: the units
// (cofferd.service, cofferd.socket), sysusers.d and tmpfiles.d entries, and
// examples (node configs, drop-ins) that `make install` puts in place. See
// README.md.
//
// It has no Go API. Its tests check the files: systemd-analyze verify and
// security (exposure at most [MaxExposure]), that every relaxation the
// security analysis lists is explained in the unit, and that the example
// configs load with cofferd's config loader. The test that runs the units
// under a real systemd is e2e/systemd_test.go.
package systemd

// MaxExposure is the highest `systemd-analyze security` exposure score
// cofferd.service may have.
const MaxExposure = 1.5
