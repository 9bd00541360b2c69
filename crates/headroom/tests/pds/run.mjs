// The reference AT Protocol PDS (@atproto/pds) on loopback, with the PLC
// directory it registers its accounts' did:plc identities with
// (@did-plc/server, on its in-memory store, as atproto's own dev-env runs
// it): both are the upstream packages from the npm registry, unmodified.
// Prints the PDS's URL once it serves, and exits when standard input
// closes (the test's end), removing its data directory.
//
//   node run.mjs        (PDS_PORT chooses the port; 0 or unset: any free one)
import { createRequire } from 'node:module'
import * as fs from 'node:fs'
import * as net from 'node:net'
import * as os from 'node:os'
import * as path from 'node:path'

const require = createRequire(import.meta.url)
const plc = require('@did-plc/server')
const pds = require('@atproto/pds')
const { Secp256k1Keypair } = require('@atproto/crypto')

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'headroom-pds-'))
const plcServer = plc.PlcServer.create({ db: plc.Database.mock(), port: 0 })
const plcHttp = await plcServer.start()
const port = Number(process.env.PDS_PORT) || (await freePort())
const rotation = await Secp256k1Keypair.create({ exportable: true })
Object.assign(process.env, {
  PDS_HOSTNAME: 'localhost',
  PDS_PORT: String(port),
  PDS_DATA_DIRECTORY: dir,
  PDS_BLOBSTORE_DISK_LOCATION: path.join(dir, 'blobs'),
  PDS_JWT_SECRET: 'headroom-test-jwt-secret',
  PDS_ADMIN_PASSWORD: 'headroom-test-admin',
  PDS_PLC_ROTATION_KEY_K256_PRIVATE_KEY_HEX: Buffer.from(
    await rotation.export(),
  ).toString('hex'),
  PDS_DID_PLC_URL: `http://127.0.0.1:${plcHttp.address().port}`,
  PDS_DEV_MODE: 'true',
  PDS_INVITE_REQUIRED: 'false',
  PDS_SERVICE_HANDLE_DOMAINS: '.test',
  PDS_RATE_LIMITS_ENABLED: 'false',
  LOG_ENABLED: 'false',
})
const env = pds.readEnv()
const server = await pds.PDS.create(pds.envToCfg(env), pds.envToSecrets(env))
await server.start()
console.log(`http://127.0.0.1:${port}`)

let stopping = false
async function stop() {
  if (stopping) return
  stopping = true
  await server.destroy().catch(() => {})
  await plcServer.destroy().catch(() => {})
  fs.rmSync(dir, { recursive: true, force: true })
  process.exit(0)
}
process.stdin.on('end', stop)
process.stdin.on('close', stop)
process.stdin.resume()
process.on('SIGTERM', stop)
