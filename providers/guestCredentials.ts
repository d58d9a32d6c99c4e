// What a domain hands its guest beyond disk and network: systemd credentials
// in SMBIOS OEM strings (type 11, `io.systemd.credential:NAME=VALUE`: its host
// name and, in bridge mode, its static address) and the label of its
// watchdog and panic devices. Pure string functions (providers/libvirtXml.ts
// puts them in the domain XML and reads them back).

/** What `resilience` asks for, as readDomain reports it back (pvpanic "isa" is QEMU's `-device pvpanic`, x86's default model). */
export function guestResilience(): string {
    return "watchdog i6300esb/reset, panic isa";
}

/** The SMBIOS OEM string that carries the host name as a systemd credential. */
export function hostnameCredential(hostname: string): string {
    return `io.systemd.credential:system.hostname=${hostname}`;
}

/**
 * The SMBIOS OEM string that carries the static address (bridge mode) as the
 * systemd credential `nixspark.network`: "MAC ADDRESS/PREFIX[ GATEWAY]",
 * which the guest reads from $CREDENTIALS_DIRECTORY (nix/modules/guest.nix,
 * nixspark-address.service) and puts on the interface with that MAC.
 */
export function networkCredential(mac: string, address: string): string {
    return `io.systemd.credential:nixspark.network=${mac.toLowerCase()} ${address}`;
}

/** "ADDRESS/PREFIX" or "ADDRESS/PREFIX GATEWAY", IPv4: what `address` may hold. */
export function isStaticAddress(s: unknown): boolean {
    const ip = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}";
    return typeof s === "string" && new RegExp(`^${ip}/([8-9]|[12][0-9]|30)( ${ip})?$`).test(s);
}

/** An RFC 1123 host name label: letters, digits and inner '-', 1 to 63 characters. */
export function isHostnameLabel(s: unknown): boolean {
    return typeof s === "string" && /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/.test(s);
}

/** The value of credential `name` among SMBIOS OEM strings, or undefined. */
export function credentialValue(entries: string[], name: string): string | undefined {
    const prefix = `io.systemd.credential:${name}=`;
    const e = entries.find((v) => v.startsWith(prefix));
    return e === undefined ? undefined : e.slice(prefix.length);
}
