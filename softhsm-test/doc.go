// Package softhsmtest gives tests real seal devices: a private SoftHSM2 token
// (softhsm.go) and a private swtpm instance (swtpm.go) per test, each torn
// down by t.Cleanup. Tests never touch the system token store
// (/var/lib/softhsm) or a real TPM.
//
// # SoftHSM: one SOFTHSM2_CONF per process, tokens before C_Initialize
//
// SoftHSM reads SOFTHSM2_CONF, and scans the token directory it names, once:
// when the process calls C_Initialize. A token created afterwards by another
// process (softhsm2-util, [AddToken]) is not visible to a process that has
// already initialised the library; the environment variable cannot be
// changed for it either. Hence:
//
//   - A daemon started as a child process by a test gets its own conf and
//     token directory: [NewToken], then pass [Token.Env] to the child.
//   - Tests inside one Go test process share one token directory: TestMain
//     sets SOFTHSM2_CONF once, to a directory of its own made with
//     [WriteConf], and every test adds its token there with [AddToken],
//     under a label no other test uses (a lookup by label must be
//     unambiguous). Create a token before the library is initialised, that
//     is before the first device is opened or while none is open (hsm/pkcs11
//     finalises the library when its last device closes), or re-initialise
//     the library afterwards (hsm/pkcs11's Device.Reopen).
//
// A TestMain for in-process tests:
//
//	func TestMain(m *testing.M) {
//		dir, err := os.MkdirTemp("", "coffer-softhsm-")
//		if err != nil {
//			log.Fatal(err)
//		}
//		conf, err := softhsmtest.WriteConf(dir)
//		if err != nil {
//			log.Fatal(err)
//		}
//		os.Setenv("SOFTHSM2_CONF", conf)
//		code := m.Run()
//		os.RemoveAll(dir)
//		os.Exit(code)
//	}
//
// Device tests fail (rather than skip) when SoftHSM2 or swtpm is missing, so
// that a CI without them cannot pass silently; set COFFER_SKIP_DEVICE_TESTS=1
// to skip them instead. `make deps` installs the packages.
package softhsmtest
