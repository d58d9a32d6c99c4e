// The verbs, in the order --help lists them. A new verb is one file here
// that exports `register(program, ctx)` returning its command.
import type { Command } from "commander";
import type { VerbContext } from "../main";
import * as status from "./status";
import * as smoke from "./smoke";
import * as ssh from "./ssh";
import * as exec from "./exec";
import * as copy from "./copy";
import * as logs from "./logs";
import * as ui from "./ui";
import * as submit from "./submit";
import * as stop from "./stop";
import * as start from "./start";
import * as heal from "./heal";

export interface Verb {
    register(program: Command, ctx: VerbContext): Command;
}

export const VERBS: Verb[] = [status, smoke, submit, ssh, exec, copy, logs, ui, stop, start, heal];
