#!/usr/bin/env node
/**
 * `strata`: the command-line interface. Each command group lives in lib/cli/commands/<group>.ts and
 * exports a yargs CommandModule; this file only assembles them.
 * Exit codes: 0 ok, 1 error, 2 usage.
 */
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { commandGroups } from './commands/index.js';
import { reportCliError } from './output.js';

async function main(argv: string[]): Promise<void> {
  let cli = yargs(argv)
    .scriptName('strata')
    .usage('$0 <command> [options]')
    .option('json', { type: 'boolean', default: false, describe: 'print JSON instead of tables' })
    .option('root', { type: 'string', describe: 'state dir (default /var/lib/strata)' })
    .option('socket', { type: 'string', describe: 'daemon control socket (default /run/strata/strata.sock)' })
    .demandCommand(1, 'name a command')
    .strict()
    .help()
    .fail((message, error, y) => {
      if (error) throw error;
      process.stderr.write(`strata: ${message}\n\n${y.help()}\n`);
      process.exit(2);
    });
  for (const group of commandGroups) cli = cli.command(group);
  await cli.parseAsync();
}

// A reader that has seen enough (`strata image ls | head`) closes the pipe: that ends the output, not in a crash.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw err;
});

main(hideBin(process.argv)).catch((err: unknown) => {
  process.exitCode = reportCliError(err);
});
