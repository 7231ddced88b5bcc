rule sample:
    input:
        f"{RESULTS}/train/{{arm}}/final.pt",
    output:
        f"{RESULTS}/samples/{{arm}}/nfe{{nfe}}.npz",
    resources:
        gpu=1,
    shell:
        "rfpp sample --profile {PROFILE} --checkpoint {input} --nfe {wildcards.nfe}"


rule fid:
    input:
        f"{RESULTS}/samples/{{arm}}/nfe{{nfe}}.npz",
    output:
        f"{RESULTS}/fid/{{arm}}-nfe{{nfe}}.json",
    resources:
        gpu=1,
    shell:
        "rfpp fid --profile {PROFILE}"


rule report:
    input:
        expand(f"{RESULTS}/fid/{{arm}}-nfe{{nfe}}.json", arm=ARMS, nfe=NFES),
    output:
        f"{RESULTS}/report.md",
    shell:
        "rfpp report --profile {PROFILE}"
