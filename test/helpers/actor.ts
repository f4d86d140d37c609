/**
 * A long-lived shell in its own process: "another process" that holds a working directory, an open file or a
 * mapping while the test changes the tree around it. Commands run one at a time; each returns its merged
 * stdout/stderr and exit status. Two interpreters: bash (a command line per call) and python3 (a statement per
 * call, for what the shell cannot hold, such as an mmap; an exception prints its errno name and status 1).
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';

const END = '__strata_actor_end__';

/** Reads one statement per line, runs it in one namespace, and ends its output with the END marker. */
const PYTHON_LOOP = `
import sys, os, mmap, errno
ns = {'os': os, 'mmap': mmap}
for line in sys.stdin:
    rc = 0
    try:
        exec(line, ns)
    except OSError as e:
        print('ERR:' + errno.errorcode.get(e.errno, str(e.errno)))
        rc = 1
    except Exception as e:
        print('EXC:' + repr(e))
        rc = 1
    print('${END} %d' % rc, flush=True)
`;

export interface ActorResult {
  out: string;
  status: number;
}

export class Actor {
  private readonly child: ChildProcessWithoutNullStreams;
  private buffer = '';
  private waiting: ((r: ActorResult) => void) | undefined;
  private exited = false;

  private readonly language: 'bash' | 'python';

  /** Starts the interpreter in `cwd`. Register `stop` as a cleanup so the process never outlives the test. */
  constructor(cwd: string, language: 'bash' | 'python' = 'bash') {
    this.language = language;
    const env = { ...process.env, LC_ALL: 'C' };
    this.child =
      language === 'bash'
        ? spawn('bash', ['--noprofile', '--norc'], { cwd, stdio: 'pipe', env })
        : spawn('python3', ['-u', '-c', PYTHON_LOOP], { cwd, stdio: 'pipe', env });
    if (language === 'bash') this.child.stdin.write('exec 2>&1\n');
    this.child.stderr.setEncoding('utf8');
    this.child.stderr.on('data', (chunk: string) => {
      this.buffer += chunk;
    });
    this.child.stdout.setEncoding('utf8');
    this.child.stdout.on('data', (chunk: string) => {
      this.buffer += chunk;
      this.deliver();
    });
    this.child.on('exit', () => {
      this.exited = true;
      this.waiting?.({ out: this.buffer, status: -1 });
      this.waiting = undefined;
    });
  }

  private deliver(): void {
    const match = new RegExp(`${END} (\\d+)\\n`).exec(this.buffer);
    if (!match || !this.waiting) return;
    const out = this.buffer.slice(0, match.index);
    this.buffer = this.buffer.slice(match.index + match[0].length);
    const done = this.waiting;
    this.waiting = undefined;
    done({ out, status: Number(match[1]) });
  }

  /** Runs one command line (bash) or statement (python) in the actor; cwd and variables persist between calls. */
  sh(line: string): Promise<ActorResult> {
    if (this.exited) return Promise.resolve({ out: '', status: -1 });
    if (this.waiting) throw new Error('Actor.sh called while a command is still running');
    return new Promise((resolve) => {
      this.waiting = resolve;
      this.child.stdin.write(this.language === 'bash' ? `${line}\necho "${END} $?"\n` : `${line}\n`);
    });
  }

  stop(): void {
    if (!this.exited) this.child.kill('SIGKILL');
  }
}
