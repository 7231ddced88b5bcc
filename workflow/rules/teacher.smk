rule teacher:
    output:
        f"{RESULTS}/teacher/teacher.pt",
    log:
        f"{RESULTS}/logs/teacher.log",
    shell:
        "rfpp teacher --profile {PROFILE} 2>&1 | tee {log}; exit ${{PIPESTATUS[0]}}"
