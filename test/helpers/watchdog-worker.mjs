// The sandbox's hang watchdog (see Sandbox in sandbox.ts). Plain JS so it runs in a worker without a loader.
// After workerData.limitMs it ends every FUSE connection mounted under workerData.root: through fusectl when it
// is mounted, otherwise by killing the server process (found by its argv naming the mountpoint and an open
// /dev/fuse), which makes the kernel abort the connection. A message stops it.
import fs from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';

function say(text) {
  // Direct write: process.stderr in a worker goes through the (blocked) main thread.
  fs.writeSync(2, `sandbox watchdog: ${text}\n`);
}

function serverPids(mnt) {
  const pids = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      if (!fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').includes(mnt)) continue;
      const fds = fs.readdirSync(`/proc/${entry}/fd`);
      if (fds.some((fd) => { try { return fs.readlinkSync(`/proc/${entry}/fd/${fd}`) === '/dev/fuse'; } catch { return false; } })) {
        pids.push(Number(entry));
      }
    } catch {
      // gone
    }
  }
  return pids;
}

function endHungMounts() {
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const fields = line.split(' ');
    const dash = fields.indexOf('-');
    const mnt = (fields[4] ?? '').replace(/\\([0-7]{3})/g, (_m, o) => String.fromCharCode(parseInt(o, 8)));
    if (dash < 0 || !(fields[dash + 1] ?? '').startsWith('fuse') || !mnt.startsWith(`${workerData.root}/`)) continue;
    // For FUSE the minor device number is the connection's id.
    const abort = `/sys/fs/fuse/connections/${(fields[2] ?? '').split(':')[1]}/abort`;
    try {
      fs.writeFileSync(abort, '1');
      say(`aborted the FUSE connection of ${mnt} after ${workerData.limitMs} ms`);
      continue;
    } catch {
      // fusectl not mounted: kill the server instead
    }
    for (const pid of serverPids(mnt)) {
      try {
        process.kill(pid, 'SIGKILL');
        say(`killed the server ${pid} of the hung mount ${mnt} after ${workerData.limitMs} ms`);
      } catch (err) {
        say(`could not kill ${pid} (${mnt}): ${err}`);
      }
    }
  }
}

// Once the limit has passed the test is over: keep ending any FUSE mount it still makes or waits on.
let repeat;
const timer = setTimeout(() => {
  endHungMounts();
  repeat = setInterval(endHungMounts, 5000);
}, workerData.limitMs);

parentPort.postMessage('running');
parentPort.on('message', () => {
  clearTimeout(timer);
  clearInterval(repeat);
  parentPort.close();
});
